# AdamW with a linear warm-up over the first epoch chained with a cosine decay over all epochs, epoch-based.
# The LoRA constructor skips frozen tensors and groups the trainable ones (no weight decay on norms and biases).
optim_wrapper = dict(
    type='OptimWrapper',
    constructor='LoRAOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05),
)

param_scheduler = [
    # Warm-up over the first epoch, updated every iteration.
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=1, convert_to_iter_based=True),
    # Cosine decay over the whole run (`end` defaults to train_cfg.max_epochs); the two factors multiply.
    dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=True, begin=0, convert_to_iter_based=True),
]

train_cfg = dict(by_epoch=True, max_epochs=10, val_interval=1)
val_cfg = dict()
test_cfg = dict()

# `tools/train.py --auto-scale-lr` scales lr by (GPUs x batch size) / base_batch_size.
auto_scale_lr = dict(base_batch_size=64, enable=False)
