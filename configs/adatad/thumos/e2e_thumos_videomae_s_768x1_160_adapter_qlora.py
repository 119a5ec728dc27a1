# AdaTAD + QLoRA on THUMOS-14: the adapter baseline plus LoRA (r=16, alpha=32) on qkv/proj/fc1/fc2 of the frozen
# VideoMAE-S, whose linears are stored as 4-bit NF4 (bitsandbytes). Keys as in the QLoRA guide users follow:
#   torchrun --nnodes=1 --nproc_per_node=1 --rdzv_backend=c10d --rdzv_endpoint=localhost:0 \
#       tools/train.py configs/adatad/thumos/e2e_thumos_videomae_s_768x1_160_adapter_qlora.py
#   ... tools/train.py <this config> --resume <work_dir>/epoch_X.pth
_base_ = ['./e2e_thumos_videomae_s_768x1_160_adapter.py']

model = dict(
    backbone=dict(
        type="VisionTransformerQLoRA",  # QLoRA version
        # QLoRA config
        lora_r=16,  # LoRA rank (8-32)
        lora_alpha=32,  # LoRA alpha (usually lora_r * 2)
        lora_dropout=0.1,  # LoRA dropout
        quantize_bits=4,  # 4-bit or 8-bit quantization
        use_plain_adapter=False,  # False: adapter with temporal conv, True: plain adapter
    ),
)

optimizer = dict(
    type="AdamW",
    lr=1e-4,
    weight_decay=0.05,
    paramwise=True,
    backbone=dict(
        lr=0,  # backbone frozen
        weight_decay=0,
        custom=[
            dict(name="adapter", lr=2e-4, weight_decay=0.05),
            dict(name="lora", lr=2e-4, weight_decay=0.05),  # LoRA learning rate
        ],
        exclude=[],
    ),
)
optim_wrapper = dict(optimizer=optimizer)

work_dir = 'exps/thumos/adatad/e2e_actionformer_videomae_s_768x1_160_adapter_qlora'
