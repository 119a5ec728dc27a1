# VGGT-1B fine-tuned on ETH3D, strategy B: LoRA on frame/global blocks 12-23 (qkv, proj, fc1, fc2) + the depth head.
# r=16, alpha=32, dropout 0.1; AdamW with the seed's lr, 10% warm-up + cosine; loss 2.0*camera + 5.0*depth terms.
#   python tools/train.py configs/depth/vggt_dpt_lora_eth3d_strategy_b.py
#   python tools/test.py configs/depth/vggt_dpt_lora_eth3d_strategy_b.py \
#       work_dirs/vggt_dpt_lora_eth3d_strategy_b/epoch_20.pth --show-dir vis
_base_ = [
    './_base_/vggt_1b.py',
    './_base_/eth3d_multiview.py',
    './_base_/schedule.py',
    './_base_/lora_strategies.py',
    './_base_/depth_runtime.py',
]

model = dict(lora=_base_.lora_strategy_b)
optim_wrapper = dict(optimizer=dict(lr=_base_.lr_strategy_b))
