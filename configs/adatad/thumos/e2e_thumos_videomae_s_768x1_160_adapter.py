# AdaTAD baseline on THUMOS-14 (OpenTAD's configs/adatad/thumos/e2e_thumos_videomae_s_768x1_160_adapter.py):
# frozen VideoMAE-S over 768-frame windows at 160x160, temporal-informative adapters after all 12 blocks, an
# ActionFormer detector. OpenTAD's keys map to MMEngine's as follows: dataset -> *_dataloader, solver -> batch
# sizes + optim_wrapper.clip_grad + default_hooks.ema (AMP: tools/train.py --amp), optimizer (verbatim) ->
# optim_wrapper.optimizer, scheduler -> param_scheduler, post_processing -> val_evaluator, workflow -> train_cfg /
# default_hooks. docs/adatad.md has the key-by-key table.
#   torchrun --nnodes=1 --nproc_per_node=1 --rdzv_backend=c10d --rdzv_endpoint=localhost:0 \
#       tools/train.py configs/adatad/thumos/e2e_thumos_videomae_s_768x1_160_adapter.py
# The backbone weights: OpenTAD's pretrained/*_my.pth (mmaction layout) load as they are, converted in memory.
_base_ = [
    '../../_base_/datasets/thumos-14/e2e_train_trunc_test_sw_256x224x224.py',  # dataset config
    '../../_base_/models/actionformer.py',  # model config
    '../../_base_/default_runtime.py',
    '../../_base_/lora_runtime.py',
]

window_size = 768
scale_factor = 1
chunk_num = window_size * scale_factor // 16  # 768/16=48 chunks, since videomae takes 16 frames as input

train_pipeline = [
    dict(type='PrepareVideoInfo', format='mp4'),
    dict(type='LoadFrames', method='random_trunc', trunc_len=window_size, trunc_thresh=0.75, crop_ratio=[0.9, 1.0]),
    dict(type='ResizeShortSide', short_side=182),
    dict(type='RandomResizedCrop'),
    dict(type='Resize', scale=(160, 160)),
    dict(type='Flip', flip_ratio=0.5),
    dict(type='ImgAug', transforms='default'),  # mmaction2's RandAugment: 2 of 15 ops per clip
    dict(type='ColorJitter'),  # mmaction2's defaults: brightness/contrast/saturation 0.5, hue 0.1
    dict(type='PackTADInputs'),  # NCTHW once batched
]
test_pipeline = [
    dict(type='PrepareVideoInfo', format='mp4'),
    dict(type='LoadFrames', method='sliding_window'),
    dict(type='ResizeShortSide', short_side=160),
    dict(type='CenterCrop', crop_size=160),
    dict(type='PackTADInputs'),
]
train_dataloader = dict(batch_size=2, num_workers=2, dataset=dict(window_size=window_size, pipeline=train_pipeline))
val_dataloader = dict(batch_size=2, num_workers=2, dataset=dict(window_size=window_size, pipeline=test_pipeline))
test_dataloader = dict(batch_size=2, num_workers=2, dataset=dict(window_size=window_size, pipeline=test_pipeline))

model = dict(
    backbone=dict(
        type='VisionTransformerAdapter',
        img_size=224,
        patch_size=16,
        embed_dims=384,
        depth=12,
        num_heads=6,
        mlp_ratio=4,
        qkv_bias=True,
        num_frames=16,
        drop_path_rate=0.1,
        norm_cfg=dict(type='LN', eps=1e-6),
        with_cp=True,  # enable activation checkpointing
        total_frames=window_size * scale_factor,
        adapter_index=list(range(12)),
        pretrained='pretrained/vit-small-p16_videomae-k400-pre_16x4x1_kinetics-400_my.pth',
    ),
    # OpenTAD's data_preprocessor of the backbone wrapper
    data_preprocessor=dict(type='TADDataPreprocessor', mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375]),
    temporal_size=window_size,  # post_processing_pipeline: Interpolate(size=window_size)
    projection=dict(
        in_channels=384,
        max_seq_len=window_size,
        attn_cfg=dict(n_mha_win_size=-1),
    ),
)

optimizer = dict(
    type='AdamW',
    lr=1e-4,
    weight_decay=0.05,
    paramwise=True,
    backbone=dict(
        lr=0,
        weight_decay=0,
        custom=[dict(name='adapter', lr=2e-4, weight_decay=0.05)],
        exclude=['backbone'],
    ),
)
optim_wrapper = dict(constructor='LoRAOptimWrapperConstructor', optimizer=optimizer, clip_grad=dict(max_norm=1))

# scheduler = dict(type="LinearWarmupCosineAnnealingLR", warmup_epoch=5, max_epoch=100), stepped every iteration
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=5, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=95, eta_min=0.0, by_epoch=True, begin=5, end=100,
         convert_to_iter_based=True),
]

post_processing = dict(
    nms=dict(
        use_soft_nms=True,
        sigma=0.7,
        max_seg_num=2000,
        multiclass=True,
        voting_thresh=0.7,  # set 0 to disable
    ),
)
val_evaluator = dict(post_processing=post_processing)
test_evaluator = dict(post_processing=post_processing)

# workflow = dict(logging_interval=50, checkpoint_interval=2, val_eval_interval=2, val_start_epoch=40, end_epoch=60)
# EpochStreamTrainLoop = EpochBasedTrainLoop whose workers prefetch the next epoch's windows while an epoch's last
# iterations train (no multi-second data wait at each epoch start; docs/engine.md), with the same batches.
train_cfg = dict(type='EpochStreamTrainLoop', max_epochs=60, val_begin=40, val_interval=2)
val_cfg = dict()
test_cfg = dict()
default_hooks = dict(
    logger=dict(interval=50),
    checkpoint=dict(interval=2, max_keep_ckpts=-1),
    # solver.ema=True: OpenTAD's ModelEma (decay 0.999) of the trainable weights; validation, test and checkpoints
    # use the average
    ema=dict(type='TrainableEMAHook', momentum=0.001),
)

work_dir = 'exps/thumos/adatad/e2e_actionformer_videomae_s_768x1_160_adapter'
