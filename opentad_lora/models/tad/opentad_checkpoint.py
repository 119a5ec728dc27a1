"""Detector checkpoints trained by OpenTAD (ActionFormer / AdaTAD) read into :class:`TADDetector`'s layout.

OpenTAD saves ``epoch_X.pth`` as ``dict(epoch, state_dict, optimizer, scheduler[, state_dict_ema])`` from a
DDP-wrapped model, so every key starts with ``module.``; its test loads ``state_dict_ema`` when the config trains
with EMA. Projection, neck and head keys are ours already. The end-to-end backbone sits under
``backbone.model.backbone.`` (OpenTAD's ``BackboneWrapper`` holds an mmaction recognizer whose ``backbone`` is the
ViT), in mmaction's VideoMAE names; its fixed sin-cos table and the final norms AdaTAD's feature-map output skips
have no counterpart here and are dropped.
"""
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from torch import Tensor

from ..backbones.videomae_pretrained import RENAMES as VIDEOMAE_RENAMES

OPENTAD_VIT_PREFIX = 'backbone.model.backbone.'
OPENTAD_WRAPPER_PREFIX = 'backbone.model.'  # recognizer parts besides the ViT (data preprocessor, head)
DROPPABLE = re.compile(r'backbone\.(pos_embed|norm\..*|fc_norm\..*)')  # dropped only when the model lacks them


@dataclass
class OpenTADConversion:
    """Result of :func:`convert_opentad_checkpoint`.

    Attributes:
        state_dict: Our keys -> tensors, exactly the model's keys.
        source: ``'state_dict_ema'`` or ``'state_dict'``: which weights of the file were used.
        dropped: File keys (without ``module.``) with no counterpart in our model.
    """

    state_dict: Dict[str, Tensor] = field(default_factory=dict)
    source: str = 'state_dict'
    dropped: List[str] = field(default_factory=list)


def _strip_ddp(key: str) -> str:
    return key[len('module.'):] if key.startswith('module.') else key


def is_opentad_checkpoint(checkpoint: Any) -> bool:
    """Whether a loaded checkpoint dict is in OpenTAD's layout (EMA weights, or the wrapped backbone's keys)."""
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get('state_dict'), Mapping):
        return False
    return 'state_dict_ema' in checkpoint or any(
        _strip_ddp(key).startswith(OPENTAD_WRAPPER_PREFIX) for key in checkpoint['state_dict'])


def _our_key(key: str) -> str:
    """Our name of an OpenTAD detector key (``module.`` already removed)."""
    if not key.startswith(OPENTAD_VIT_PREFIX):
        return key
    vit_key = key[len(OPENTAD_VIT_PREFIX):]
    for pattern, replacement in VIDEOMAE_RENAMES:  # mmaction's VideoMAE names -> ours
        vit_key = pattern.sub(replacement, vit_key)
    return 'backbone.' + vit_key


def _short(keys: List[str], limit: int = 8) -> str:
    return f'{keys[:limit]}{" ..." if len(keys) > limit else ""}'


def convert_opentad_checkpoint(checkpoint: Mapping[str, Any], model_state: Mapping[str, Tensor],
                               use_ema: bool = True, name: str = 'checkpoint') -> OpenTADConversion:
    """Map an OpenTAD detector checkpoint onto a model's state dict; EMA weights when present and ``use_ema``.

    Args:
        checkpoint: The loaded ``epoch_X.pth`` dict.
        model_state: ``model.state_dict()`` of the detector to fill (keys and shapes are checked).
        use_ema: Prefer ``state_dict_ema`` (OpenTAD's test with ``solver.ema=True``).
        name: File name used in error messages.

    Raises:
        ValueError: when the file leaves a model tensor unset, has a tensor the model lacks or a shape differs.
    """
    source = 'state_dict_ema' if use_ema and 'state_dict_ema' in checkpoint else 'state_dict'
    result = OpenTADConversion(source=source)
    for src_key, value in checkpoint[source].items():
        src_key = _strip_ddp(src_key)
        key = _our_key(src_key)
        if key not in model_state and (key.startswith(OPENTAD_WRAPPER_PREFIX) or DROPPABLE.fullmatch(key)):
            result.dropped.append(src_key)
            continue
        result.state_dict[key] = value
    unexpected = sorted(set(result.state_dict) - set(model_state))
    missing = sorted(set(model_state) - set(result.state_dict))
    wrong = [f'{key}: file {tuple(result.state_dict[key].shape)} vs model {tuple(value.shape)}'
             for key, value in model_state.items() if key in result.state_dict
             and tuple(result.state_dict[key].shape) != tuple(value.shape)]
    problems = [f'{label} {_short(keys)}' for label, keys in (
        ('tensors the model lacks', unexpected), ('model tensors missing from the file', missing),
        ('shape mismatches', wrong)) if keys]
    if problems:
        raise ValueError(
            f'OpenTAD checkpoint {name} ({source}) does not fit this detector: {"; ".join(problems)}. Use the config '
            'matching the OpenTAD one (backbone size, adapter_index, num_classes, projection arch); an OpenTAD file '
            'has no LoRA weights, so evaluate it with the *_adapter.py config, not a *_qlora one.')
    return result


class OpenTADCheckpointHook(Hook):
    """Lets the Runner load OpenTAD's ``epoch_X.pth`` (``load_from`` / ``tools/test.py CONFIG FILE``).

    Runs after the file is read and before MMEngine copies its ``state_dict`` into the model: an OpenTAD file's
    weights (EMA ones when present) are rewritten in our names, or the run stops with one error naming the keys.
    Checkpoints in our own layout pass through untouched.
    """

    priority = 'VERY_HIGH'

    def after_load_checkpoint(self, runner, checkpoint: Dict[str, Any]) -> None:
        if not is_opentad_checkpoint(checkpoint):
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        name = getattr(runner, '_load_from', None) or 'checkpoint'
        result = convert_opentad_checkpoint(checkpoint, model.state_dict(), name=str(name))
        checkpoint['state_dict'] = result.state_dict
        checkpoint.pop('state_dict_ema', None)
        print_log(f'OpenTAD checkpoint {name}: loaded {len(result.state_dict)} tensors from {result.source} '
                  f'(dropped {len(result.dropped)} with no counterpart: {_short(result.dropped, 4)})',
                  logger='current')
