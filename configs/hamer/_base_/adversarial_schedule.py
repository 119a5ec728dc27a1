# HaMeR's adversarial training in the MMEngine Runner, iteration based (HaMeR counts steps).
# Two AdamW optimizers in an OptimWrapperDict: 'generator' (the backbone and head LoRA, grad clip = TRAIN.GRAD_CLIP_VAL)
# and 'discriminator' (its LoRA). HaMeRLoRA.train_step steps the generator, then the discriminator. Only trainable
# (LoRA) tensors are optimised. HaMeR's TRAIN.LR is the lr of both optimizers, so the seed's TRAIN.LR=5e-5 is
#   --cfg-options optim_wrapper.generator.optimizer.lr=5e-5 optim_wrapper.discriminator.optimizer.lr=5e-5
# A part's own lr goes in OpenTAD's prefix form, e.g. generator.optimizer.backbone=dict(lr=...); the constructor then
# refuses an optimizer lr that no parameter uses, so an override is never silently ignored.
lr = 1e-4  # seed: TRAIN.LR 1e-4 (HaMeR full fine-tuning: 1e-5)
weight_decay = 0.01  # seed: TRAIN.WEIGHT_DECAY 0.01
optim_wrapper = dict(
    constructor='LoRAOptimWrapperConstructor',
    generator=dict(
        modules=['backbone', 'mano_head'],
        clip_grad=dict(max_norm=1.0),  # seed: TRAIN.GRAD_CLIP_VAL 1.0
        optimizer=dict(type='AdamW', lr=lr, weight_decay=weight_decay)),
    discriminator=dict(
        optimizer=dict(type='AdamW', lr=lr, weight_decay=weight_decay)),
)

max_iters = 100_000
checkpoint_steps = 1000  # seed: GENERAL.CHECKPOINT_STEPS
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=checkpoint_steps)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

# The hooks (the best checkpoint by PA-MPJPE plus the last three, LoRA weights every checkpoint_steps) and the log
# processor are set in the top-level config: default_runtime.py / lora_runtime.py own those keys among the bases.
