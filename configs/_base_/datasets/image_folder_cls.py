# Image classification from folders of class subfolders (data_root/<split>/<class>/<image>), uint8 RGB tensors.
data_root = 'data/synthetic_cls'

train_pipeline = [dict(type='LoadImage'), dict(type='PackClsInputs')]
test_pipeline = [dict(type='LoadImage'), dict(type='PackClsInputs')]

train_dataloader = dict(
    batch_size=16,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(type='ImageFolderDataset', data_root=data_root + '/train', pipeline=train_pipeline),
)
val_dataloader = dict(
    batch_size=32,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(type='ImageFolderDataset', data_root=data_root + '/val', pipeline=test_pipeline, test_mode=True),
)
test_dataloader = val_dataloader

val_evaluator = dict(type='ClsAccuracy', topk=(1, ))
test_evaluator = val_evaluator
