# HaMeR-tiny + LoRA on synthetic FreiHAND-layout hands rendered from a synthetic MANO-format model; CPU, minutes.
# Same model code, names, LoRA targets, losses, two-optimizer schedule and metric as the ViT-H config; smaller sizes.
#   python tools/data/make_synthetic_mano.py data/synthetic_hands/MANO_RIGHT.pkl
#   python tools/data/make_synthetic_hands.py data/synthetic_hands --mano data/synthetic_hands/MANO_RIGHT.pkl \
#       --init-checkpoint configs/hamer/hamer_tiny_lora_synthetic.py
#   python tools/train.py configs/hamer/hamer_tiny_lora_synthetic.py
#   python tools/test.py configs/hamer/hamer_tiny_lora_synthetic.py work_dirs/hamer_tiny_lora_synthetic/iter_300.pth
#   python tools/demo_hamer.py data/synthetic_hands/evaluation/rgb --checkpoint \
#       work_dirs/hamer_tiny_lora_synthetic/iter_300.pth --save-mesh --side-view --out-dir demo_out
_base_ = ['./hamer_vit_h_lora_freihand.py']

data_root = 'data/synthetic_hands/'
mano_model_path = data_root + 'MANO_RIGHT.pkl'  # written by tools/data/make_synthetic_mano.py
# A seeded initialisation in the official HaMeR checkpoint layout (written by make_synthetic_hands.py
# --init-checkpoint), standing in for hamer.ckpt so the frozen base is rebuilt exactly at construction.
pretrained_model_path = data_root + 'hamer_tiny_init.ckpt'

model = dict(
    backbone=dict(embed_dim=64, depth=4, num_heads=2, drop_path_rate=0.0),
    mano_head=dict(context_dim=64, dim=128, depth=2, heads=4, dim_head=32, mlp_dim=256, init_decoder_xavier=True),
    discriminator=dict(fc_dim=128),
    mano=dict(model_path=mano_model_path),
    pretrained_model_path=pretrained_model_path,
    lora=dict(r=8, alpha=16.0),
)
dataset_common = dict(data_root=data_root, img_suffix='.png', add_hands_mean=True, mano_model_path=mano_model_path)
train_dataloader = dict(batch_size=8, num_workers=0,
                        dataset=dict(**dataset_common, versions=(0, ), mocap_file=data_root + 'mocap.npz'))
val_dataloader = dict(batch_size=8, num_workers=0, dataset=dict(**dataset_common))
test_dataloader = val_dataloader

lr = 1e-3  # the tiny random base needs a larger step than the seed's 1e-4
optim_wrapper = dict(
    generator=dict(optimizer=dict(lr=lr)),
    discriminator=dict(optimizer=dict(lr=lr)))
max_iters = 300
checkpoint_steps = 100
train_cfg = dict(max_iters=max_iters, val_interval=checkpoint_steps)
default_hooks = dict(logger=dict(interval=20), checkpoint=dict(interval=checkpoint_steps))
custom_hooks = [
    dict(type='LoRACheckpointHook', trainable_only=True, interval=checkpoint_steps, max_keep=-1, save_final=True),
]
