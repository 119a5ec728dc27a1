"""Small config adjustments ``tools/train.py`` and ``tools/test.py`` apply before building the Runner."""
import logging
import os
from typing import List, Mapping, MutableMapping, Optional

import torch
from mmengine.logging import print_log

from .compile_hook import CompileHook
from .cuda_graph_hook import CUDAGraphHook
from .ddp import TORCHRUN_ENV, init_cpu_process_group

CPU_DDP_WRAPPER = 'opentad_lora.AnyDeviceDistributedDataParallel'  # scoped: the Runner looks the type up in the root
CHECKPOINT_MATCH_HOOK = 'opentad_lora.CheckpointMatchHook'
COMPILE_HOOK = 'opentad_lora.CompileHook'
CUDA_GRAPH_HOOK = 'opentad_lora.CUDAGraphHook'


def setup_launcher(cfg: MutableMapping, launcher: str = 'none') -> str:
    """Choose the launcher and the process-group backend; sets ``cfg.launcher`` and returns it.

    ``torchrun`` exports ``WORLD_SIZE``/``LOCAL_RANK``, but MMEngine treats ``launcher='none'`` as single-process,
    so ``torchrun --nproc-per-node N tools/train.py cfg`` would start N independent trainings. With those variables
    set, ``'none'`` becomes ``'pytorch'``. The backend (``cfg.env_cfg.dist_cfg.backend``) becomes ``gloo`` without
    CUDA (NCCL needs GPUs) and defaults to ``nccl`` with CUDA; an explicit non-NCCL backend is kept.

    DDP on CPU under ``torchrun`` (launcher ``'pytorch'``): MMEngine 0.10.7 cannot start it by itself (see
    :mod:`opentad_lora.engine.ddp`), so the gloo process group is created here and, unless the config has a
    ``model_wrapper_cfg``, the model is wrapped by ``AnyDeviceDistributedDataParallel``.

    Args:
        cfg: The MMEngine config (or a plain dict), modified in place.
        launcher: The ``--launcher`` argument.
    """
    if launcher == 'none' and any(name in os.environ for name in TORCHRUN_ENV):
        launcher = 'pytorch'
    cfg['launcher'] = launcher
    env_cfg = dict(cfg.get('env_cfg') or {})
    dist_cfg = dict(env_cfg.get('dist_cfg') or {})
    backend = dist_cfg.get('backend')
    if not torch.cuda.is_available():
        if backend in (None, 'nccl'):
            dist_cfg['backend'] = 'gloo'
    elif backend is None:
        dist_cfg['backend'] = 'nccl'
    env_cfg['dist_cfg'] = dist_cfg
    cfg['env_cfg'] = env_cfg
    if launcher == 'pytorch' and not torch.cuda.is_available():
        init_cpu_process_group(dist_cfg['backend'])
        if cfg.get('model_wrapper_cfg') is None:
            cfg['model_wrapper_cfg'] = dict(type=CPU_DDP_WRAPPER, broadcast_buffers=False,
                                            find_unused_parameters=cfg.get('find_unused_parameters', False))
    return launcher


def _optim_wrapper_cfgs(optim_wrapper: MutableMapping) -> List[MutableMapping]:
    """The single optim wrapper config, or each named one of an ``OptimWrapperDict`` config."""
    if 'optimizer' in optim_wrapper:
        return [optim_wrapper]
    return [value for value in optim_wrapper.values() if isinstance(value, MutableMapping) and 'optimizer' in value]


def setup_amp(cfg: MutableMapping) -> Optional[str]:
    """Turn on mixed precision (``--amp``) where it can run; returns the autocast dtype or ``None``.

    With CUDA, every ``OptimWrapper`` becomes an ``AmpOptimWrapper`` with ``dtype='bfloat16'`` (or ``'float16'``
    with dynamic loss scaling on GPUs without bf16). Without CUDA it logs why and keeps float32, because MMEngine's
    ``AmpOptimWrapper`` asserts a GPU. Other wrapper types (e.g. DeepSpeed's) are left as they are.

    Args:
        cfg: The MMEngine config (or a plain dict) with ``optim_wrapper``, modified in place.
    """
    if not torch.cuda.is_available():
        print_log('--amp: no CUDA device, so training stays in float32 (MMEngine\'s AmpOptimWrapper needs a GPU).',
                  logger='current', level=logging.WARNING)
        return None
    dtype = 'bfloat16' if torch.cuda.is_bf16_supported() else 'float16'
    for wrapper in _optim_wrapper_cfgs(cfg['optim_wrapper']):
        kind = wrapper.get('type', 'OptimWrapper')
        if kind not in ('OptimWrapper', 'AmpOptimWrapper'):
            print_log(f'--amp: optim wrapper type {kind!r} is left unchanged.', logger='current',
                      level=logging.WARNING)
            continue
        wrapper['type'] = 'AmpOptimWrapper'
        wrapper.setdefault('loss_scale', 'dynamic')
        wrapper['dtype'] = dtype
    print_log(f'--amp: mixed precision with {dtype} autocast.', logger='current')
    return dtype



def _is_hook(hook: Mapping, hook_type: str) -> bool:
    """Whether a ``custom_hooks`` entry is of ``hook_type`` (scoped or not: ``opentad_lora.X`` and ``X`` match)."""
    return str(hook.get('type', '')).split('.')[-1] == hook_type.split('.')[-1]


def _without_hook(cfg: MutableMapping, hook_type: str) -> list:
    return [hook for hook in (cfg.get('custom_hooks') or []) if not _is_hook(hook, hook_type)]


def add_checkpoint_match_hook(cfg: MutableMapping, check_load_from: bool) -> None:
    """Add :class:`~opentad_lora.engine.CheckpointMatchHook` to ``cfg.custom_hooks`` unless the config has one.

    Args:
        cfg: The MMEngine config (or a plain dict), modified in place.
        check_load_from: Check ``load_from`` checkpoints too (``tools/test.py``), not only resumed ones.
    """
    hooks = list(cfg.get('custom_hooks') or [])
    if not any(_is_hook(hook, CHECKPOINT_MATCH_HOOK) for hook in hooks):
        hooks.append(dict(type=CHECKPOINT_MATCH_HOOK, check_load_from=check_load_from))
    cfg['custom_hooks'] = hooks


def setup_compile(cfg: MutableMapping, flag: bool = False) -> bool:
    """Turn the config's ``compile`` (or ``--compile``) into :class:`~opentad_lora.engine.CompileHook`.

    ``compile`` keeps MMEngine's format (``True`` or a dict of ``torch.compile`` keyword arguments, plus the hook's
    ``regional``: compile each repeated block instead of the whole loss forward); ``flag`` means
    ``compile=True`` unless the config already gives arguments. The key is then set to ``False`` so that the Runner
    does not also compile ``train_step`` (optimizer included, see :mod:`opentad_lora.engine.compile_hook`).
    Returns whether training will be compiled.

    Args:
        cfg: The MMEngine config (or a plain dict), modified in place.
        flag: The ``--compile`` argument.
    """
    options = cfg.get('compile') or flag
    cfg['compile'] = False
    if not options:
        return False
    kwargs = dict(options) if isinstance(options, Mapping) else {}
    CompileHook(**kwargs)  # refuses bad options here, before the Runner makes its work_dir
    cfg['custom_hooks'] = [*_without_hook(cfg, COMPILE_HOOK), dict(type=COMPILE_HOOK, **kwargs)]
    return True


def setup_cuda_graph(cfg: MutableMapping, flag: bool = False) -> bool:
    """Turn the config's ``cuda_graph`` (or ``--cuda-graph``) into :class:`~opentad_lora.engine.CUDAGraphHook`.

    ``cuda_graph`` is ``True`` (the model's ``backbone``) or a dict of the hook's arguments (``modules``,
    ``warmup_iters``); ``flag`` means ``True`` unless the config gives arguments. Refused with ``compile``:
    ``torch.compile(mode='reduce-overhead')`` replays CUDA graphs itself. Call after :func:`setup_compile`.
    Returns whether training will replay CUDA graphs.

    Args:
        cfg: The MMEngine config (or a plain dict), modified in place.
        flag: The ``--cuda-graph`` argument.
    """
    options = cfg.pop('cuda_graph', None) or flag
    if not options:
        return False
    if any(_is_hook(hook, COMPILE_HOOK) for hook in cfg.get('custom_hooks') or []):
        raise ValueError('cuda_graph and compile are both set: choose one (compile with mode="reduce-overhead" '
                         'replays CUDA graphs of the compiled code; cuda_graph replays the eager kernels).')
    kwargs = dict(options) if isinstance(options, Mapping) else {}
    CUDAGraphHook(**kwargs)  # refuses bad options here, before the Runner makes its work_dir
    cfg['custom_hooks'] = [*_without_hook(cfg, CUDA_GRAPH_HOOK), dict(type=CUDA_GRAPH_HOOK, **kwargs)]
    return True
