# THUMOS-14 end to end from mp4 files, OpenTAD's layout: training on random truncations of the `training` subset
# (THUMOS validation videos), evaluation on sliding windows of the `validation` subset (THUMOS test videos).
annotation_path = 'data/thumos-14/annotations/thumos_14_anno.json'
class_map = 'data/thumos-14/annotations/category_idx.txt'
data_path = 'data/thumos-14/raw_data/video'
window_size = 256  # frames (sample_stride=1)

train_pipeline = [
    dict(type='PrepareVideoInfo', format='mp4'),
    dict(type='LoadFrames', method='random_trunc', trunc_thresh=0.75, crop_ratio=[0.9, 1.0]),
    dict(type='ResizeShortSide', short_side=256),
    dict(type='RandomCrop', crop_size=224),
    dict(type='Flip', flip_ratio=0.5),
    dict(type='PackTADInputs'),
]
test_pipeline = [
    dict(type='PrepareVideoInfo', format='mp4'),
    dict(type='LoadFrames', method='sliding_window'),
    dict(type='ResizeShortSide', short_side=224),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackTADInputs'),
]

train_dataloader = dict(
    batch_size=2,
    num_workers=2,
    # Workers live across epochs (no stall for fresh workers at each epoch start); EpochSeedHook seeds every sample
    # from (seed, epoch, index), so a resumed run still loads the same data.
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(
        type='ThumosPaddingDataset',
        ann_file=annotation_path,
        subset_name='training',
        data_path=data_path,
        class_map=class_map,
        window_size=window_size,
        sample_stride=1,
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=2,
    num_workers=2,
    persistent_workers=True,  # deterministic pipeline: keeping the workers only saves their start
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(
        type='ThumosSlidingDataset',
        ann_file=annotation_path,
        subset_name='validation',
        data_path=data_path,
        class_map=class_map,
        window_size=window_size,
        window_overlap_ratio=0.25,
        sample_stride=1,
        test_mode=True,
        pipeline=test_pipeline,
    ),
)
test_dataloader = dict(
    batch_size=2,
    num_workers=2,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(
        type='ThumosSlidingDataset',
        ann_file=annotation_path,
        subset_name='validation',
        data_path=data_path,
        class_map=class_map,
        window_size=window_size,
        window_overlap_ratio=0.5,
        sample_stride=1,
        test_mode=True,
        pipeline=test_pipeline,
    ),
)

# OpenTAD's `post_processing` of AdaTAD's THUMOS configs (soft-NMS per class over all windows of a video; OpenTAD
# turns voting off for multiclass NMS) and `evaluation`
post_processing = dict(nms=dict(use_soft_nms=True, sigma=0.7, max_seg_num=2000, multiclass=True, voting_thresh=0.7))
val_evaluator = dict(
    type='TADmAPMetric',
    ann_file=annotation_path,
    subset='validation',
    tiou_thresholds=[0.3, 0.4, 0.5, 0.6, 0.7],
    post_processing=post_processing,
)
test_evaluator = val_evaluator
