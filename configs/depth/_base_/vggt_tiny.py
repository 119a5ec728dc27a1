# A VGGT-shaped model small enough for CPU tests: the same module names and block counts as VGGT-1B (24 frame +
# 24 global blocks, so the strategies' layer ranges select the same blocks), width 32, a conv patch embedding, a
# 1-block camera trunk and an 8/16/32/32-channel DPT head. Loss as vggt_1b.py with the valid-pixel threshold
# scaled to the small images.
model = dict(
    type='DepthEstimator',
    aggregator=dict(type='VGGTAggregator', img_size=56, patch_size=14, embed_dim=32, depth=24, num_heads=2,
                    mlp_ratio=2.0, num_register_tokens=4, qk_norm=True, rope_freq=100, init_values=0.01,
                    patch_embed='conv'),
    depth_head=dict(type='DPTHeadLoRA', features=16, out_channels=[8, 16, 32, 32],
                    intermediate_layer_idx=[4, 11, 17, 23], frames_chunk_size=None),
    camera_head=dict(type='CameraHead', trunk_depth=1, num_heads=2, num_iterations=2),
    loss=dict(type='VGGTDepthCameraLoss', camera_weight=2.0, depth_weight=5.0, valid_range=0.98, grad_scales=2,
              min_valid_points=20, min_quantile_elements=200),
    normalize_gt=True,
    pretrained=None,
)
