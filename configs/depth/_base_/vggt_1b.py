# VGGT-1B (facebook/VGGT-1B shapes): DINOv2-L/14 patch embedding with 4 registers, 24 frame + 24 global blocks at
# width 1024 (16 heads, QK-norm, RoPE-2D freq 100, LayerScale 0.01), camera head (4-block trunk at 2048, 4
# refinement iterations) and DPT depth head (features 256, layers 4/11/17/23, exp depth + 1+exp confidence).
# The point and track heads are not built. Convert the official model.pt first:
#   python tools/model_converters/vggt_to_opentad_lora.py pretrained/vggt-1b/model.pt checkpoints/vggt_1b.pth
model = dict(
    type='DepthEstimator',
    aggregator=dict(type='VGGTAggregator', img_size=518, patch_size=14, embed_dim=1024, depth=24, num_heads=16,
                    mlp_ratio=4.0, num_register_tokens=4, qk_norm=True, rope_freq=100, init_values=0.01,
                    patch_embed='dinov2_vitl14_reg', with_cp=True),
    depth_head=dict(type='DPTHeadLoRA', output_dim=2, activation='exp', conf_activation='expp1', features=256,
                    out_channels=[256, 512, 1024, 1024], intermediate_layer_idx=[4, 11, 17, 23], frames_chunk_size=8),
    camera_head=dict(type='CameraHead', trunk_depth=4, num_heads=16, num_iterations=4),
    # The seed's ETH3D recipe: loss = 2.0 * camera + 5.0 * (depth confidence + regression + gradient).
    # Camera: L1 on translation / quaternion / FoV (weights 1 / 1 / 0.5) over the 4 refinement stages (gamma 0.6).
    # Depth: gamma*|d-d*|*c - alpha*log(c) (gamma 1, alpha 0.2) and |d-d*|, outliers above the 98th percentile
    # dropped, plus a 4-scale gradient loss; targets in frame-0 coordinates at unit scene scale (normalize_gt).
    loss=dict(type='VGGTDepthCameraLoss', camera_weight=2.0, depth_weight=5.0, conf_gamma=1.0, conf_alpha=0.2,
              valid_range=0.98, grad_scales=4, grad_conf=False, min_valid_points=100),
    normalize_gt=True,
    pretrained='checkpoints/vggt_1b.pth',
)
