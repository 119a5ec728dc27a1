"""MMEngine glue: optimizer constructor, LoRA checkpoint hook, safe checkpoint loading, runner helpers, FSDP,
the epoch-streaming train loop.

Importing this package (the registry ``locations`` do it whenever a Runner builds one of our hooks or optimizer
constructors, and ``opentad_lora.models`` imports it for the safe loader) installs the safe ``weights_only``
checkpoint loader and the atomic checkpoint writes in MMEngine.
"""
from .checkpoint import (MM_SAFE_GLOBALS, TRUST_ENV, AtomicLocalBackend, CheckpointError, UnsafeCheckpointError,
                         atomic_open, atomic_torch_save, enable_atomic_checkpoint_writes, load_checkpoint_file,
                         register_safe_checkpoint_loader)
from .checkpoint_match import (CheckpointMatchHook, CheckpointMismatchError, check_checkpoint_matches,
                               check_optimizer_matches)
from .compile_hook import CompileHook
from .cuda_graph_hook import CUDAGraphHook, GraphedForward
from .ddp import AnyDeviceDistributedDataParallel, init_cpu_process_group
from .ema_hook import TrainableEMAHook, ema_weights, trainable_view
from .epoch_seed_hook import EpochSeedHook, epoch_seed
from .epoch_stream_loop import (EpochStreamBatchSampler, EpochStreamTrainLoop, EpochTaggedDataset,
                                epoch_stream_dataloader)
from .export import adapter_root, merged_state_dict, save_adapter_folder, save_merged_model
from .fsdp import LoRAFSDPStrategy, lora_fsdp_auto_wrap_policy
from .lora_checkpoint_hook import LoRACheckpointHook
from .optim_constructor import LoRAOptimWrapperConstructor, format_param_groups, log_param_groups
from .runner_utils import add_checkpoint_match_hook, setup_amp, setup_compile, setup_cuda_graph, setup_launcher

register_safe_checkpoint_loader()
enable_atomic_checkpoint_writes()

__all__ = [
    'MM_SAFE_GLOBALS', 'TRUST_ENV', 'AtomicLocalBackend', 'CheckpointError', 'UnsafeCheckpointError', 'atomic_open',
    'atomic_torch_save', 'enable_atomic_checkpoint_writes', 'load_checkpoint_file', 'register_safe_checkpoint_loader',
    'adapter_root', 'merged_state_dict', 'save_adapter_folder', 'save_merged_model', 'LoRACheckpointHook',
    'LoRAOptimWrapperConstructor', 'format_param_groups', 'log_param_groups', 'setup_amp', 'setup_launcher',
    'AnyDeviceDistributedDataParallel', 'init_cpu_process_group', 'EpochSeedHook', 'epoch_seed', 'LoRAFSDPStrategy',
    'lora_fsdp_auto_wrap_policy', 'TrainableEMAHook', 'ema_weights', 'trainable_view', 'CheckpointMatchHook',
    'CheckpointMismatchError', 'check_checkpoint_matches', 'check_optimizer_matches', 'add_checkpoint_match_hook',
    'CompileHook', 'setup_compile', 'CUDAGraphHook', 'GraphedForward', 'setup_cuda_graph', 'EpochStreamTrainLoop',
    'EpochStreamBatchSampler', 'EpochTaggedDataset', 'epoch_stream_dataloader',
]
