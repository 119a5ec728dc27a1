"""The seed's CLIP-LoRA API as package functions (``create_clip_model``, ``get_parameters``, ...)."""
import warnings
from typing import Any, Dict, Mapping

from torch import nn

from opentad_lora.federated.params import get_parameters, get_parameters_dict, set_parameters
from opentad_lora.peft import count_parameters, has_lora
from opentad_lora.peft import get_lora_info as peft_lora_info
from opentad_lora.registry import MODELS
from .lora_config import TOWERS

__all__ = ['create_clip_model', 'is_lora_enabled', 'get_lora_info', 'get_model_summary', 'get_parameters',
           'get_parameters_dict', 'set_parameters']


def create_clip_model(config: Mapping[str, Any]) -> nn.Module:
    """Build a CLIP model from the seed's config dict.

    ``model_name`` (``'openai/clip-vit-base-patch32'``, ``'ViT-B/16'``...) or ``arch`` picks the architecture (no
    download: weights come from ``pretrained``, a local OpenAI/HF checkpoint); ``lora`` is the per-encoder dict.
    With ``class_names`` the result is a :class:`CLIPClassifier` (``templates``, ``logit_scale`` optional),
    otherwise a :class:`ViTLoRA`. ``num_classes``, if given, must equal ``len(class_names)``.

    Raises:
        ValueError: ``num_classes`` without ``class_names`` (CLIP classifies by its text embedding of each class
            name: a count alone cannot make a classifier).

    Warns:
        UserWarning: no ``pretrained`` key: the weights are random, not CLIP's (``pretrained=None`` says so on
            purpose and silences the warning).
    """
    config = dict(config)
    if 'num_classes' in config and 'class_names' not in config:
        raise ValueError(f"create_clip_model: num_classes={config['num_classes']} but no 'class_names': CLIP "
                         "classifies by comparing images with the text of each class, so give class_names (one "
                         "prompt word per class, in label order); drop num_classes for a bare CLIP backbone.")
    if 'pretrained' not in config:
        warnings.warn("create_clip_model: no 'pretrained' key, so the CLIP weights are RANDOM (nothing is "
                      "downloaded): set config['pretrained'] to a local OpenAI/HF CLIP checkpoint, or "
                      "pretrained=None to train from scratch on purpose.", UserWarning, stacklevel=2)
    clip = dict(type='ViTLoRA', arch=config.pop('arch', config.pop('model_name', 'ViT-B/16')))
    for key in ('pretrained', 'checkpoint_layout', 'lora', 'with_cp'):
        if key in config:
            clip[key] = config.pop(key)
    num_classes = config.pop('num_classes', None)
    if 'class_names' not in config:
        if config:
            raise ValueError(f'Unknown keys {sorted(config)} for a CLIP model without class_names.')
        return MODELS.build(clip)
    if num_classes is not None and num_classes != len(config['class_names']):
        raise ValueError(f'num_classes={num_classes} but {len(config["class_names"])} class_names were given.')
    return MODELS.build(dict(type='CLIPClassifier', clip=clip, **config))


def _clip(model: nn.Module) -> nn.Module:
    """The ``ViTLoRA`` inside a classifier (or the model itself)."""
    return getattr(model, 'clip', model)


def is_lora_enabled(model: nn.Module) -> bool:
    """Whether the model has LoRA layers."""
    return has_lora(model)


def get_lora_info(model: nn.Module) -> Dict[str, Any]:
    """:func:`opentad_lora.peft.get_lora_info` plus the seed's keys: ``enabled``, ``trainable_parameters``,
    ``total_parameters`` and ``per_encoder`` (LoRA parameters of each tower)."""
    info = peft_lora_info(model)
    per_encoder = {tower: sum(r['lora_params'] for r in info['rows'] if f'.{attr}.' in f".{r['name']}")
                   for tower, attr in TOWERS.items()}
    return dict(info, enabled=bool(info['rows']), trainable_parameters=info['trainable'],
                total_parameters=info['total'], per_encoder=per_encoder)


def get_model_summary(model: nn.Module) -> Dict[str, Any]:
    """Total/trainable counts overall and per top-level part of CLIP, the architecture and the LoRA state."""
    trainable, total = count_parameters(model)
    clip = _clip(model)
    parts = {name: dict(zip(('trainable', 'total'), count_parameters(child))) for name, child in
             clip.named_children()}
    return dict(total_parameters=total, trainable_parameters=trainable,
                trainable_percent=100.0 * trainable / max(total, 1), lora_enabled=has_lora(model),
                arch=getattr(clip, 'arch', None), parts=parts)
