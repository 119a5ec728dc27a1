# AdaTAD + QLoRA-4bit on THUMOS-14 with VideoMAE ViT-B (OpenTAD's B settings: adapter lr 1e-4).
_base_ = ['./e2e_thumos_videomae_s_768x1_160_adapter_qlora.py']

model = dict(
    backbone=dict(
        embed_dims=768,
        depth=12,
        num_heads=12,
        adapter_index=list(range(12)),
        pretrained='pretrained/vit-base-p16_videomae-k400-pre_16x4x1_kinetics-400_20221013-860a3cd3.pth',
    ),
    projection=dict(in_channels=768),
)

optimizer = dict(backbone=dict(custom=[
    dict(name='adapter', lr=1e-4, weight_decay=0.05),
    dict(name='lora', lr=1e-4, weight_decay=0.05),
]))
optim_wrapper = dict(optimizer=optimizer)

work_dir = 'exps/thumos/adatad/e2e_actionformer_videomae_b_768x1_160_adapter_qlora'
