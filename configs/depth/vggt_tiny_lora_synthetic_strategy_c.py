# Strategy C on the tiny VGGT-shaped model and synthetic ETH3D-layout scenes (CPU, about a minute):
# LoRA on frame/global blocks 0-23 + depth head + camera head (DINOv2 patch embedding frozen).
#   python tools/data/make_synthetic_scenes.py --out data/synthetic_scenes
#   python tools/train.py configs/depth/vggt_tiny_lora_synthetic_strategy_c.py
#   python tools/test.py configs/depth/vggt_tiny_lora_synthetic_strategy_c.py \
#       work_dirs/vggt_tiny_lora_synthetic_strategy_c/epoch_10.pth --show-dir vis
_base_ = [
    './_base_/vggt_tiny.py',
    './_base_/synthetic_scenes.py',
    './_base_/schedule_synthetic.py',
    './_base_/lora_strategies.py',
    './_base_/depth_runtime.py',
]

# The seeded stand-in for a converted VGGT checkpoint, written by make_synthetic_scenes.py.
model = dict(lora=_base_.lora_strategy_c, pretrained=_base_.data_root + '/vggt_tiny_init.pth')
# The tiny model starts from random features: a larger step than the seed's rate for VGGT-1B.
optim_wrapper = dict(optimizer=dict(lr=1e-3))
