# ActionFormer detector as in OpenTAD's `_base_/models/actionformer.py`, end to end: a config adds
# `model.backbone` (e.g. VisionTransformerAdapter / VisionTransformerQLoRA) and sets the widths and lengths.
# Same architecture and parameter names as OpenTAD's: its trained checkpoints load (tools/test.py CONFIG epoch_X.pth).
model = dict(
    type='TADDetector',  # also registered as 'ActionFormer'
    # uint8 NCTHW clips -> float, normalised with VideoMAE's (ImageNet) mean/std in pixel units
    data_preprocessor=dict(type='TADDataPreprocessor', mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375]),
    # resample backbone features to this many steps (None: keep T // tubelet_size)
    temporal_size=None,
    projection=dict(
        type='Conv1DTransformerProj',
        in_channels=2048,
        out_channels=512,
        arch=(2, 2, 5),  # conv embedding layers, stem conv-attention blocks, downsampling branch blocks
        conv_cfg=dict(kernel_size=3, proj_pdrop=0.0),
        norm_cfg=dict(type='LN'),
        attn_cfg=dict(n_head=4, n_mha_win_size=19),  # -1: global attention
        path_pdrop=0.1,  # the same stochastic depth in every block, with a per-channel layer scale
        use_abs_pe=False,
        max_seq_len=2304,  # shorter inputs are zero-padded to this length (masked)
        input_pdrop=0.0,
    ),
    neck=dict(type='FPNIdentity', in_channels=512, out_channels=512, num_levels=6),  # LayerNorm per level
    rpn_head=dict(
        type='ActionFormerHead',
        num_classes=20,
        in_channels=512,
        feat_channels=512,
        num_convs=2,  # conv layers per tower, before the prediction convs
        cls_prior_prob=0.01,
        prior_generator=dict(
            type='PointGenerator',
            strides=[1, 2, 4, 8, 16, 32],
            regression_range=[(0, 4), (4, 8), (8, 16), (16, 32), (32, 64), (64, 10000)],
        ),
        loss_normalizer=100,
        loss_normalizer_momentum=0.9,
        center_sample='radius',
        center_sample_radius=1.5,
        label_smoothing=0.0,
        loss=dict(cls_loss=dict(type='FocalLoss'), reg_loss=dict(type='DIOULoss')),
    ),
    # per-window decoding before the per-video NMS of the metric: top-k over all levels, every segment kept
    test_cfg=dict(pre_nms_thresh=0.001, pre_nms_topk=2000),
)
