# AdaTAD + QLoRA-4bit on THUMOS-14 with VideoMAE ViT-H (OpenTAD's H settings: adapter lr 1e-4).
_base_ = ['./e2e_thumos_videomae_s_768x1_160_adapter_qlora.py']

model = dict(
    backbone=dict(
        embed_dims=1280,
        depth=32,
        num_heads=16,
        adapter_index=list(range(32)),
        pretrained='pretrained/vit-huge-p16_videomae-k400-pre_16x4x1_kinetics-400_my.pth',
    ),
    projection=dict(in_channels=1280),
)

optimizer = dict(backbone=dict(custom=[
    dict(name='adapter', lr=1e-4, weight_decay=0.05),
    dict(name='lora', lr=1e-4, weight_decay=0.05),
]))
optim_wrapper = dict(optimizer=optimizer)

work_dir = 'exps/thumos/adatad/e2e_actionformer_videomae_h_768x1_160_adapter_qlora'
