# VGGT-1B fine-tuned on ETH3D, strategy A: LoRA on every Conv2d of the DPT depth head (its ConvTranspose2d frozen).
# r=16, alpha=32, dropout 0.1; AdamW with the seed's lr, 10% warm-up + cosine; loss 2.0*camera + 5.0*depth terms.
#   python tools/train.py configs/depth/vggt_dpt_lora_eth3d_strategy_a.py
#   python tools/test.py configs/depth/vggt_dpt_lora_eth3d_strategy_a.py \
#       work_dirs/vggt_dpt_lora_eth3d_strategy_a/epoch_20.pth --show-dir vis
_base_ = [
    './_base_/vggt_1b.py',
    './_base_/eth3d_multiview.py',
    './_base_/schedule.py',
    './_base_/lora_strategies.py',
    './_base_/depth_runtime.py',
]

model = dict(lora=_base_.lora_strategy_a)
optim_wrapper = dict(optimizer=dict(lr=_base_.lr_strategy_a))
