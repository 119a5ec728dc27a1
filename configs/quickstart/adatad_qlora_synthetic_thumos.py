# Quickstart (the README's main job): AdaTAD with QLoRA-4bit + temporal adapters on a tiny VideoMAE-style ViT,
# end to end from mp4 files, on a synthetic THUMOS-format dataset. A few minutes on a 2-core CPU in total (on a
# CPU shared with other work, prefix the commands with OMP_NUM_THREADS=1: the tensors are tiny):
#   python tools/data/make_synthetic_thumos.py --out data/synthetic_thumos          # skipped when complete
#   python tools/train.py configs/quickstart/adatad_qlora_synthetic_thumos.py
#   python tools/test.py configs/quickstart/adatad_qlora_synthetic_thumos.py \
#       work_dirs/adatad_qlora_synthetic_thumos/epoch_30.pth
#   python tools/merge_lora.py configs/quickstart/adatad_qlora_synthetic_thumos.py \
#       work_dirs/adatad_qlora_synthetic_thumos/epoch_30.pth work_dirs/adatad_qlora_synthetic_thumos/export
# Same model, data pipeline, metric and optimizer form as configs/adatad/thumos/*_adapter_qlora.py; only the sizes
# (128-frame windows of 32x32 frames, a 2-block 64-wide ViT, a 4-level pyramid) and the learning rates differ.
# Ends with the mAP table, work_dirs/.../final_lora_weights/ (PEFT adapter files) and merged_model/model.pth.
_base_ = [
    '../_base_/models/actionformer.py',
    '../_base_/datasets/thumos-14/e2e_train_trunc_test_sw_256x224x224.py',
    '../_base_/schedules/adamw_cosine.py',
    '../_base_/default_runtime.py',
    '../_base_/lora_runtime.py',
]

data_root = 'data/synthetic_thumos/'
ann_file = data_root + 'annotations/thumos_14_anno.json'
class_map = data_root + 'annotations/category_idx.txt'
data_path = data_root + 'raw_data/video/'
pretrained = data_root + 'pretrained_videomae_tiny.pth'  # written by tools/data/make_synthetic_thumos.py

num_classes = 4
window_size = 128  # frames per window (OpenTAD: 768)
frame_size = 32  # short side / crop (OpenTAD: 160)
embed_dims = 64
depth = 2
feat_len = window_size // 2  # VideoMAE's tubelet halves time

model = dict(
    backbone=dict(
        type='VisionTransformerQLoRA',
        img_size=frame_size,
        patch_size=16,
        embed_dims=embed_dims,
        depth=depth,
        num_heads=2,
        mlp_ratio=4,
        qkv_bias=True,
        num_frames=16,
        tubelet_size=2,
        drop_path_rate=0.0,
        norm_cfg=dict(type='LN', eps=1e-6),
        with_cp=False,
        total_frames=window_size,
        adapter_index=list(range(depth)),
        adapter_mlp_ratio=0.25,
        pretrained=pretrained,
        # QLoRA: LoRA on qkv/proj/fc1/fc2 over a 4-bit NF4 frozen base
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.0,  # no dropout: MMEngine does not checkpoint torch's RNG, so resume stays bitwise exact
        quantize_bits=4,
        use_plain_adapter=False,
    ),
    projection=dict(in_channels=embed_dims, out_channels=64, arch=(1, 1, 3), max_seq_len=feat_len,
                    attn_cfg=dict(n_head=4, n_mha_win_size=-1), path_pdrop=0.0, input_pdrop=0.0),
    neck=dict(in_channels=64, out_channels=64, num_levels=4),
    rpn_head=dict(
        num_classes=num_classes,
        in_channels=64,
        feat_channels=64,
        num_convs=1,  # one conv layer per head tower at this toy size (OpenTAD's THUMOS configs: 2)
        prior_generator=dict(strides=[1, 2, 4, 8], regression_range=[(0, 4), (4, 8), (8, 16), (16, 10000)]),
        loss_normalizer=10,
    ),
    test_cfg=dict(pre_nms_topk=200),
)

train_pipeline = [
    dict(type='PrepareVideoInfo', format='mp4'),
    dict(type='LoadFrames', method='random_trunc', trunc_thresh=0.75, crop_ratio=[0.9, 1.0]),
    dict(type='ResizeShortSide', short_side=frame_size + 4),
    dict(type='RandomCrop', crop_size=frame_size),
    dict(type='Flip', flip_ratio=0.5),
    dict(type='PackTADInputs'),
]
test_pipeline = [
    dict(type='PrepareVideoInfo', format='mp4'),
    dict(type='LoadFrames', method='sliding_window'),
    dict(type='ResizeShortSide', short_side=frame_size),
    dict(type='CenterCrop', crop_size=frame_size),
    dict(type='PackTADInputs'),
]
dataset_common = dict(ann_file=ann_file, data_path=data_path, class_map=class_map, window_size=window_size)
train_dataloader = dict(
    batch_size=4,
    num_workers=1,
    persistent_workers=False,  # workers re-seeded identically each epoch: a resumed run sees the same data
    dataset=dict(**dataset_common, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4,
    num_workers=1,
    persistent_workers=False,
    dataset=dict(**dataset_common, pipeline=test_pipeline, window_overlap_ratio=0.25))
test_dataloader = val_dataloader
post_processing = dict(nms=dict(use_soft_nms=True, sigma=0.5, max_seg_num=100, min_score=0.001, multiclass=True,
                                voting_thresh=0.7))
val_evaluator = dict(ann_file=ann_file, post_processing=post_processing)
test_evaluator = val_evaluator

# OpenTAD's optimizer form (detector at lr, backbone frozen except adapters and LoRA); larger lrs for the tiny run
optimizer = dict(
    type='AdamW',
    lr=1e-3,
    weight_decay=0.05,
    paramwise=True,
    backbone=dict(
        lr=0,
        weight_decay=0,
        custom=[dict(name='adapter', lr=2e-3, weight_decay=0.05), dict(name='lora', lr=2e-3, weight_decay=0.05)],
        exclude=[],
    ),
)
optim_wrapper = dict(optimizer=optimizer)
max_epochs = 30
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=2, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=2, end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
default_hooks = dict(checkpoint=dict(interval=5, max_keep_ckpts=2), logger=dict(interval=10))
custom_hooks = [dict(type='LoRACheckpointHook', trainable_only=True, interval=-1, save_final=True, save_merged=True)]
randomness = dict(seed=0)
