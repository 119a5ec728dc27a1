# The seed's optimiser: AdamW (betas 0.9/0.999, weight decay 0.01), 10% linear warm-up, then cosine to 1e-6,
# gradient clipping at 1.0 (VGGT's fine-tuning config). The learning rate is set by each strategy.
_base_ = ['../../_base_/schedules/adamw_cosine.py']

max_epochs = 20
optim_wrapper = dict(optimizer=dict(type='AdamW', lr=5e-5, betas=(0.9, 0.999), weight_decay=0.01),
                     clip_grad=dict(max_norm=1.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=True, begin=0, end=max_epochs // 10,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=True, begin=max_epochs // 10, end=max_epochs,
         convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=1)
