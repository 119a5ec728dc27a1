# Runtime defaults shared by every config: registry scope, hooks, logging, environment, randomness.

# Look registered names up in opentad_lora first, then in MMEngine (AdamW, CheckpointHook, ...).
default_scope = 'opentad_lora'

default_hooks = dict(
    # Records the runtime information (config, seed, iteration) into the message hub.
    runtime_info=dict(type='RuntimeInfoHook'),
    # Measures data and iteration time.
    timer=dict(type='IterTimerHook'),
    # Prints the log every `interval` iterations (small: runs here are short).
    logger=dict(type='LoggerHook', interval=10),
    # Steps the learning-rate schedulers.
    param_scheduler=dict(type='ParamSchedulerHook'),
    # Saves a checkpoint every epoch, keeps the last three and `last_checkpoint` for `--resume`.
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=3, save_last=True),
    # Sets the sampler epoch so shuffling differs per epoch and is reproducible (also under DDP).
    sampler_seed=dict(type='DistSamplerSeedHook'),
    # Re-seeds python/numpy/torch at each epoch from (seed, epoch, rank): a resumed run draws the same dropout
    # masks as an uninterrupted one (MMEngine saves no RNG state).
    epoch_seed=dict(type='EpochSeedHook'),
)

env_cfg = dict(
    # Deterministic convolution algorithm choice (cudnn autotuning off).
    cudnn_benchmark=False,
    # Multi-processing settings of the dataloader workers.
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    # Distributed backend; tools/train.py switches to gloo when there is no GPU.
    dist_cfg=dict(backend='nccl'),
)

# Scalars go to work_dir/<timestamp>/vis_data (JSON) and, when `tensorboard` is installed, to TensorBoard
# (the optional backend is a no-op with a warning otherwise).
vis_backends = [dict(type='LocalVisBackend'), dict(type='OptionalTensorboardVisBackend')]
visualizer = dict(type='Visualizer', vis_backends=vis_backends)

# Smooths logged values over the logging window; epoch-based logs.
log_processor = dict(type='LogProcessor', window_size=10, by_epoch=True)

log_level = 'INFO'

# A checkpoint to initialise from (weights only) and whether to resume its training state.
load_from = None
resume = False

# Seed of Python, numpy and torch; `deterministic=True` also forces deterministic torch kernels.
randomness = dict(seed=0, deterministic=False)
