"""Refuse a checkpoint written for another model before anything is evaluated or trained.

MMEngine loads ``load_from`` with ``strict=False`` and only logs what does not fit, so ``tools/test.py`` with the
checkpoint of another config evaluates a half-loaded model and prints a number; ``--resume`` with one dies inside
the optimizer (``different number of parameter groups``). :func:`check_checkpoint_matches` compares the checkpoint's
state dict with what the model saves — its trainable tensors and buffers for a LoRA checkpoint trimmed by
:class:`~opentad_lora.engine.LoRACheckpointHook`, its whole ``state_dict()`` otherwise — and, on resume,
:func:`check_optimizer_matches` compares the optimizer's parameter groups. Either raises
:class:`CheckpointMismatchError` naming the file, the config and the tensors or groups that differ.

:class:`CheckpointMatchHook` runs both in ``after_load_checkpoint``, which MMEngine calls right after reading the
file and before it loads anything into the model or the optimizer. ``tools/test.py`` and ``tools/train.py`` add it.
A converter of a foreign checkpoint layout (e.g. OpenTAD's) goes *before* the check: a hook with a higher priority
(``'HIGH'`` or above) that rewrites ``checkpoint['state_dict']`` in place, or a tool that converts the file first,
so the check always sees the keys the model will be loaded with.
"""
import re
from typing import Any, Dict, List, Mapping, Optional, Set, Tuple

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.runner import find_latest_checkpoint
from torch import nn

from opentad_lora.peft import trainable_state_dict
from opentad_lora.registry import HOOKS
from .checkpoint import CheckpointError
from .lora_checkpoint_hook import TRIMMED_META_KEY

SHOWN = 5  # names listed per kind of difference; the rest are counted
_WRAPPER_PREFIX = re.compile(r'^module\.')  # what MMEngine's load_checkpoint strips by default (revise_keys)
FSDP_PREFIX = '_fsdp_wrapped_module.'
CHECKPOINT_WRAPPER_PREFIX = '_checkpoint_wrapped_module.'


class CheckpointMismatchError(CheckpointError):
    """A checkpoint's tensors or optimizer groups do not fit the model built from the config."""


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if is_model_wrapper(model) else model


def _is_fsdp(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FullyShardedDataParallel
    return isinstance(model, FullyShardedDataParallel)


def _names(keys: List[str]) -> str:
    shown = ', '.join(keys[:SHOWN])
    return shown + (f' and {len(keys) - SHOWN} more' if len(keys) > SHOWN else '')


def _shape(shape) -> str:
    return 'x'.join(map(str, shape)) or 'scalar'


def _fsdp_names(model: nn.Module, trimmed: bool) -> Set[str]:
    """Names of the parameters (trainable ones if ``trimmed``) and persistent buffers of an FSDP-wrapped model,
    without FSDP's wrapper prefixes (a full ``state_dict()`` would be a collective call)."""
    names = {name for name, p in model.named_parameters() if p.requires_grad or not trimmed}
    for prefix, module in model.named_modules():
        names |= {f'{prefix}.{name}' if prefix else name for name in module._buffers
                  if module._buffers[name] is not None and name not in module._non_persistent_buffers_set}
    return {name.replace(FSDP_PREFIX, '').replace(CHECKPOINT_WRAPPER_PREFIX, '') for name in names
            if '_flat_param' not in name}  # use_orig_params=False: the original names are not known


def expected_tensors(model: nn.Module, trimmed: bool) -> Dict[str, Optional[Tuple[int, ...]]]:
    """Name -> shape of the tensors a checkpoint of ``model`` holds (shape ``None``: not compared).

    ``trimmed``: a LoRA checkpoint, which holds the trainable tensors and buffers only. Under FSDP the shapes are
    not compared (parameters are flattened shards there).
    """
    if _is_fsdp(model):
        return dict.fromkeys(_fsdp_names(model, trimmed))
    inner = _unwrap(model)
    state = trainable_state_dict(inner) if trimmed else inner.state_dict()
    return {name: tuple(value.shape) if isinstance(value, torch.Tensor) else None for name, value in state.items()}


def checkpoint_state_dict(checkpoint: Mapping[str, Any]) -> Dict[str, Any]:
    """The model state of a loaded checkpoint file (``checkpoint['state_dict']`` or the file itself), with the
    ``module.`` prefix of a wrapped model removed as MMEngine removes it when loading."""
    state = checkpoint.get('state_dict', checkpoint)
    return {_WRAPPER_PREFIX.sub('', key): value for key, value in state.items()}


def _mismatch(path: str, config: str, problems: List[str]) -> CheckpointMismatchError:
    return CheckpointMismatchError(
        f'Checkpoint {path} does not fit config {config}: ' + '; '.join(problems) +
        '. Was it written with this config? Pass the checkpoint of this config, or the config it was trained with. '
        'Nothing was loaded.')


def check_checkpoint_matches(model: nn.Module, checkpoint: Mapping[str, Any], path: str, config: str) -> None:
    """Raise :class:`CheckpointMismatchError` unless ``checkpoint`` holds exactly the tensors ``model`` saves.

    Args:
        model: The model the checkpoint will be loaded into (a DDP/FSDP wrapper is fine).
        checkpoint: The loaded file, after any layout conversion.
        path: The checkpoint file, for the message.
        config: The config file the model was built from, for the message.
    """
    trimmed = bool(checkpoint.get('meta', {}).get(TRIMMED_META_KEY)) if 'state_dict' in checkpoint else False
    expected = expected_tensors(model, trimmed)
    found = checkpoint_state_dict(checkpoint)
    saved = 'trainable tensors and buffers' if trimmed else 'tensors'
    problems = []
    missing = sorted(set(expected) - set(found))
    if missing:
        problems.append(f'{len(missing)} {saved} of the model are not in the file ({_names(missing)})')
    # Under FSDP only parameters and buffers are known without a collective call; a full checkpoint may also hold
    # the extra state of quantized layers, so only missing tensors are reported there.
    unexpected = [] if _is_fsdp(model) and not trimmed else sorted(set(found) - set(expected))
    if unexpected:
        problems.append(f'{len(unexpected)} tensors of the file are not {saved} of the model ({_names(unexpected)})')
    shapes = [f'{key} [file {_shape(found[key].shape)}, model {_shape(expected[key])}]'
              for key in sorted(set(expected) & set(found))
              if expected[key] is not None and isinstance(found[key], torch.Tensor)
              and tuple(found[key].shape) != expected[key]]
    if shapes:
        problems.append(f'{len(shapes)} tensors differ in shape ({_names(shapes)})')
    if problems:
        raise _mismatch(path, config, problems)


def param_group_sizes(state: Mapping[str, Any], prefix: str = '') -> Dict[str, List[int]]:
    """Tensors per parameter group of every optimizer in an optim-wrapper state dict, keyed by wrapper name
    (``''`` for a single ``OptimWrapper``, the names of an ``OptimWrapperDict`` otherwise)."""
    if 'param_groups' in state:
        return {prefix: [len(group['params']) for group in state['param_groups']]}
    sizes: Dict[str, List[int]] = {}
    for name, value in state.items():
        if isinstance(value, Mapping):
            sizes.update(param_group_sizes(value, f'{prefix}.{name}' if prefix else name))
    return sizes


def check_optimizer_matches(optimizer_state: Mapping[str, Any], checkpoint: Mapping[str, Any], path: str,
                            config: str) -> None:
    """Raise :class:`CheckpointMismatchError` unless the checkpoint's optimizer has the same parameter groups
    (number of groups and tensors per group, per optimizer) as ``optimizer_state`` (the built optim wrapper's)."""
    if 'optimizer' not in checkpoint:
        return
    want, got = param_group_sizes(optimizer_state), param_group_sizes(checkpoint['optimizer'])
    if want != got:
        describe = '; '.join(f'{name or "optimizer"}: {sizes}' for name, sizes in sorted(want.items()))
        in_file = '; '.join(f'{name or "optimizer"}: {sizes}' for name, sizes in sorted(got.items()))
        raise _mismatch(path, config, [f'its optimizer has other parameter groups (tensors per group in the file: '
                                       f'{in_file}; this config: {describe})'])


@HOOKS.register_module()
class CheckpointMatchHook(Hook):
    """Check a loaded or resumed checkpoint against the model (and, on resume, the optimizer) before it is used.

    Args:
        check_load_from: Also check ``load_from`` checkpoints that are not resumed. ``tools/test.py`` does; in
            training ``load_from`` is an initialisation that may legitimately cover part of the model, so
            ``tools/train.py`` checks resumed checkpoints only.
    """

    priority = 'ABOVE_NORMAL'  # after converters (HIGH and above), before EMAHook and LoRACheckpointHook use it

    def __init__(self, check_load_from: bool = True) -> None:
        self.check_load_from = check_load_from

    @staticmethod
    def _checkpoint_path(runner) -> str:
        """The file ``Runner.load_or_resume`` read (MMEngine gives the hook the content, not the name)."""
        return str(runner._load_from or find_latest_checkpoint(runner.work_dir))

    def after_load_checkpoint(self, runner, checkpoint: Dict[str, Any]) -> None:
        resuming = bool(runner._resume)
        if not (resuming or self.check_load_from):
            return
        path = self._checkpoint_path(runner)
        config = getattr(runner.cfg, 'filename', None) or '(built in Python)'
        check_checkpoint_matches(runner.model, checkpoint, path, config)
        if resuming and not _is_fsdp(runner.model):  # FSDP keeps its optimizer state keyed by names
            check_optimizer_matches(runner.optim_wrapper.state_dict(), checkpoint, path, config)
