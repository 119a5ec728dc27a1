# Quickstart: LoRA (r=8 on qkv / attn.proj / fc1 / fc2, head trained in full) on a tiny ViT, 4-class synthetic
# PNG images. CPU, well under a minute. Make the data (and the stand-in pretrained ViT) first:
#   python tools/data/make_synthetic_images.py --out data/synthetic_cls
#   python tools/train.py configs/quickstart/vit_lora_synthetic_cls.py
#   python tools/test.py configs/quickstart/vit_lora_synthetic_cls.py work_dirs/vit_lora_synthetic_cls/epoch_6.pth
#   python tools/merge_lora.py configs/quickstart/vit_lora_synthetic_cls.py \
#       work_dirs/vit_lora_synthetic_cls/epoch_6.pth work_dirs/vit_lora_synthetic_cls/export
_base_ = [
    '../_base_/models/vit_lora_cls.py',
    '../_base_/datasets/image_folder_cls.py',
    '../_base_/schedules/adamw_cosine.py',
    '../_base_/default_runtime.py',
    '../_base_/lora_runtime.py',
]

data_root = 'data/synthetic_cls'
model = dict(
    backbone=dict(arch=None, img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4, drop_path_rate=0.0,
                  pretrained=data_root + '/pretrained_vit.pth'),
    num_classes=4,
    lora=dict(r=8, alpha=16, dropout=0.0),
    data_preprocessor=dict(mean=[127.5, 127.5, 127.5], std=[127.5, 127.5, 127.5]),
)

train_dataloader = dict(dataset=dict(data_root=data_root + '/train'))
val_dataloader = dict(dataset=dict(data_root=data_root + '/val'))
test_dataloader = val_dataloader

optim_wrapper = dict(optimizer=dict(lr=3e-3))
train_cfg = dict(max_epochs=6)
auto_scale_lr = dict(base_batch_size=16)
