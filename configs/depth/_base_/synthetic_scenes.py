# Synthetic ETH3D-layout scenes from tools/data/make_synthetic_scenes.py (2 scenes of 12 frames, 56x42 by
# default), read by the same dataset class as ETH3D: sparse COLMAP-point depth for training, dense ground truth
# for evaluation.
data_root = 'data/synthetic_scenes'
dataset_type = 'COLMAPMultiViewDataset'
num_views = 4
img_size = (42, 56)

train_dataloader = dict(
    batch_size=1,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root, num_views=num_views, stride=2, split='train',
                 train_ratio=2 / 3, img_size=img_size, depth_source='sparse'),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, num_views=num_views, stride=num_views, split='val',
                 train_ratio=2 / 3, img_size=img_size, depth_source='dense'),
)
test_dataloader = val_dataloader
val_evaluator = dict(type='DepthMetric', alignment='least_squares', align_per='frame')
test_evaluator = val_evaluator
