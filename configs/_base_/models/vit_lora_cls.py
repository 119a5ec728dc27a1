# ViT image classifier with LoRA on every block (qkv, attention output, MLP) and the linear head trained in full.
model = dict(
    type='ImageClassifier',
    backbone=dict(type='VisionTransformer', arch='base', img_size=224, patch_size=16, drop_path_rate=0.1,
                  out_type='cls', pretrained=None),
    num_classes=1000,
    # `attn.proj`, not `proj`: a bare `proj` would also match the patch-embedding convolution `patch_embed.proj`.
    lora=dict(r=8, alpha=16, dropout=0.1, targets=['qkv', 'attn.proj', 'fc1', 'fc2'], modules_to_save=['head']),
    # uint8 RGB batches -> float, normalised with the ImageNet statistics.
    data_preprocessor=dict(type='ImgDataPreprocessor', mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375]),
)
