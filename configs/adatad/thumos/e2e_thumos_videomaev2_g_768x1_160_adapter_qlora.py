# AdaTAD + QLoRA-4bit on THUMOS-14 with VideoMAE ViT-g (VideoMAE-v2) (OpenTAD's G settings: adapter lr 1e-4).
_base_ = ['./e2e_thumos_videomae_s_768x1_160_adapter_qlora.py']

model = dict(
    backbone=dict(
        patch_size=14,
        mlp_ratio=48 / 11,
        embed_dims=1408,
        depth=40,
        num_heads=16,
        adapter_index=list(range(40)),
        pretrained='pretrained/vit-giant-p14_videomaev2-hybrid_pt_1200e_k710_ft_my.pth',
    ),
    projection=dict(in_channels=1408),
)

optimizer = dict(backbone=dict(custom=[
    dict(name='adapter', lr=1e-4, weight_decay=0.05),
    dict(name='lora', lr=1e-4, weight_decay=0.05),
]))
optim_wrapper = dict(optimizer=optimizer)

work_dir = 'exps/thumos/adatad/e2e_actionformer_videomaev2_g_768x1_160_adapter_qlora'
