# CLIP-LoRA (Zanella & Ben Ayed, CVPRW 2024) few-shot recipe: ViT-B/16, LoRA r=2 on q/k/v of every layer of both
# encoders, alpha=1 with alpha/sqrt(r) scaling, dropout 0.25, AdamW 2e-4 (wd 1e-2) with cosine decay over
# 500 x shots iterations, batch 32, fixed logit scale 100, prompt "a photo of a {}.".
# Needs OpenAI's ViT-B-16.pt (TorchScript archive or state dict) or an HF CLIPModel safetensors file, an image folder
# data_root/{train,val}/<class>/*.jpg, the class names below in label order, and the BPE vocabulary
# (pip install --no-deps open-clip-torch).
_base_ = [
    '../_base_/datasets/image_folder_cls.py',
    '../_base_/default_runtime.py',
    '../_base_/lora_runtime.py',
]

data_root = 'data/my_dataset'
shots = 16
class_names = ['class one', 'class two']  # prompt words, in the order of the sorted class folders
qkv = ['q_proj', 'k_proj', 'v_proj']
model = dict(
    type='CLIPClassifier',
    clip=dict(type='ViTLoRA', arch='ViT-B/16', pretrained='checkpoints/ViT-B-16.pt',
              lora=dict(enabled=True, r=2, alpha=1, dropout=0.25, use_rslora=True,
                        vision=dict(target_modules=qkv), text=dict(target_modules=qkv))),
    class_names=class_names,
    templates=['a photo of a {}.'],
    logit_scale=100.0,
)

train_pipeline = [dict(type='LoadImage'), dict(type='CLIPRandomResizedCrop', size=224, scale=(0.08, 1.0)),
                  dict(type='PackClsInputs')]
test_pipeline = [dict(type='LoadImage'), dict(type='CLIPCenterCrop', size=224), dict(type='PackClsInputs')]
train_dataloader = dict(
    batch_size=32, num_workers=4, sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type='FewShotImageFolder', data_root=data_root + '/train', num_shots=shots, shot_seed=1,
                 pipeline=train_pipeline))
val_dataloader = dict(batch_size=64, num_workers=4, dataset=dict(data_root=data_root + '/val', pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='ClsAccuracy', topk=(1, 5))
test_evaluator = val_evaluator

max_iters = 500 * shots
optim_wrapper = dict(type='OptimWrapper', constructor='LoRAOptimWrapperConstructor',
                     optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=1e-2))
param_scheduler = [dict(type='CosineAnnealingLR', T_max=max_iters, eta_min=1e-6, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict()
test_cfg = dict()
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=max_iters // 4), logger=dict(interval=50))
log_processor = dict(by_epoch=False)
