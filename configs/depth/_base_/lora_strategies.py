# The seed's three LoRA strategies for VGGT on ETH3D (r=16, alpha=32, dropout 0.1), as target lists of the core's
# syntax on DepthEstimator's module names (= the official VGGT names). Only nn.Linear and groups=1 Conv2d are
# wrapped: the DPT head's resize_layers.0/1 are ConvTranspose2d, which the LoRA core does not support, so they stay
# frozen (resize_layers.3 is a Conv2d and is adapted); norms and LayerScale stay frozen everywhere.
lora_rank = dict(r=16, alpha=32, dropout=0.1)

# Every convolution of the DPT depth head except the transposed ones.
depth_head_targets = [
    'depth_head.projects.0-3',
    'depth_head.resize_layers.3',
    're:depth_head\\.scratch\\.layer[1-4]_rn',
    'depth_head.scratch.*.conv1',
    'depth_head.scratch.*.conv2',
    'depth_head.scratch.*.out_conv',
    'depth_head.scratch.output_conv1',
    'depth_head.scratch.output_conv2.0',
    'depth_head.scratch.output_conv2.2',
]
# Attention (qkv, proj) and MLP (fc1, fc2) of the late (12-23) or all (0-23) frame and global blocks.
aggregator_late_targets = [f'aggregator.{kind}_blocks.12-23.*.{name}'
                           for kind in ('frame', 'global') for name in ('qkv', 'proj', 'fc1', 'fc2')]
aggregator_all_targets = [f'aggregator.{kind}_blocks.0-23.*.{name}'
                          for kind in ('frame', 'global') for name in ('qkv', 'proj', 'fc1', 'fc2')]
# Camera head: its trunk blocks and the pose embedding / AdaLN modulation / pose branch linears.
camera_head_targets = ['camera_head.trunk.*.qkv', 'camera_head.trunk.*.proj', 'camera_head.trunk.*.fc1',
                       'camera_head.trunk.*.fc2', 'camera_head.embed_pose', 'camera_head.poseLN_modulation.1',
                       'camera_head.pose_branch.fc1', 'camera_head.pose_branch.fc2']

# A: depth head only (~quick validation). B: late aggregator blocks + depth head (the seed's recommendation).
# C: all frame/global blocks + depth head + camera head (the DINOv2 patch embedding stays frozen, as in the seed).
lora_strategy_a = dict(**lora_rank, targets=depth_head_targets)
lora_strategy_b = dict(**lora_rank, targets=aggregator_late_targets + depth_head_targets)
lora_strategy_c = dict(**lora_rank, targets=aggregator_all_targets + depth_head_targets + camera_head_targets)
# The seed's learning rates.
lr_strategy_a, lr_strategy_b, lr_strategy_c = 1e-4, 5e-5, 3e-5
