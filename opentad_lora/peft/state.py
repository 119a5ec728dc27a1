"""Adapter state: PEFT-format state dicts and files, merge/unmerge, adapter switching.

Files are PEFT's: ``adapter_model.safetensors`` with keys ``base_model.model.<module>.lora_A.weight`` (the adapter
name is not part of the key) and ``adapter_config.json`` with PEFT's ``LoraConfig`` fields, so PEFT loads ours and
we load PEFT's. Our own ``LoRAConfig`` (quantization and all) rides along in the safetensors metadata.
"""
import json
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..fileio import atomic_open
from .config import LoRAConfig
from .inject import CONFIGS_ATTR, apply_lora, iter_lora_layers, saved_module_names
from .layers import LoRALayer
from .quant import dequantize_linear, is_quantized

PEFT_PREFIX = 'base_model.model.'
WEIGHTS_NAME = 'adapter_model.safetensors'
CONFIG_NAME = 'adapter_config.json'
_METADATA_KEY = 'opentad_lora_config'


def _saved_modules(model: nn.Module) -> Dict[str, nn.Module]:
    return {name: model.get_submodule(name) for name in saved_module_names(model)}


def lora_state_dict(model: nn.Module, adapter_name: str = 'default') -> Dict[str, Tensor]:
    """The adapter's tensors under PEFT's file keys: LoRA A/B of every layer and the ``modules_to_save``."""
    state = {}
    for name, layer in iter_lora_layers(model):
        if adapter_name in layer.lora_A:
            state[f'{PEFT_PREFIX}{name}.lora_A.weight'] = layer.lora_A[adapter_name].weight.detach()
            state[f'{PEFT_PREFIX}{name}.lora_B.weight'] = layer.lora_B[adapter_name].weight.detach()
    for name, module in _saved_modules(model).items():
        for key, value in module.state_dict().items():
            state[f'{PEFT_PREFIX}{name}.{key}'] = value.detach()
    return state


def _lora_config_of(model: nn.Module, adapter_name: str) -> Optional[LoRAConfig]:
    for module in model.modules():
        configs = getattr(module, CONFIGS_ATTR, None)
        if configs and adapter_name in configs:
            return configs[adapter_name]
    return None


def peft_adapter_config(model: nn.Module, adapter_name: str = 'default') -> Dict[str, Any]:
    """PEFT's ``adapter_config.json`` for the adapter as it sits in ``model``.

    ``target_modules`` is the explicit list of wrapped module names, and ``rank_pattern``/``alpha_pattern`` name every
    module whose rank/alpha differs from the most common one, so PEFT rebuilds exactly the same layers.
    """
    layers = {name: layer for name, layer in iter_lora_layers(model) if adapter_name in layer.lora_A}
    if not layers:
        raise ValueError(f'The model has no LoRA adapter named {adapter_name!r}.')
    ranks = {name: layer.r[adapter_name] for name, layer in layers.items()}
    alphas = {name: layer.lora_alpha[adapter_name] for name, layer in layers.items()}
    rank = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    first = next(iter(layers.values()))
    cfg = _lora_config_of(model, adapter_name)
    return dict(
        peft_type='LORA', task_type=None, r=rank, lora_alpha=alpha, target_modules=sorted(layers),
        lora_dropout=first.dropout_p[adapter_name], use_rslora=first.use_rslora[adapter_name],
        rank_pattern={n: r for n, r in ranks.items() if r != rank},
        alpha_pattern={n: a for n, a in alphas.items() if a != alpha},
        modules_to_save=sorted(_saved_modules(model)) or None, bias='none', fan_in_fan_out=False,
        init_lora_weights=True, inference_mode=True, exclude_modules=None, layers_to_transform=None,
        layers_pattern=None, revision=None, use_dora=False,
        base_model_name_or_path=cfg.base_model_name_or_path if cfg else None)


def save_adapter(model: nn.Module, out_dir: Union[str, Path], adapter_name: str = 'default') -> Path:
    """Write ``adapter_model.safetensors`` and ``adapter_config.json`` (PEFT's format) to ``out_dir``."""
    from safetensors.torch import save

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous().cpu() for k, v in lora_state_dict(model, adapter_name).items()}
    config = peft_adapter_config(model, adapter_name)
    own = _lora_config_of(model, adapter_name)
    metadata = {'format': 'pt'}
    if own is not None:
        metadata[_METADATA_KEY] = json.dumps(own.to_dict())
    with atomic_open(out_dir / WEIGHTS_NAME, 'wb') as handle:
        handle.write(save(state, metadata=metadata))
    with atomic_open(out_dir / CONFIG_NAME, 'w', encoding='utf-8') as handle:
        json.dump(config, handle, indent=2)
    return out_dir


def _peft_pattern(key: str) -> str:
    """PEFT matches ``rank_pattern`` keys as the regex ``(.*\\.)?key$``; express that in our syntax."""
    return f're:(?:.*\\.)?(?:{key})'


def config_from_peft(peft_cfg: Dict[str, Any]) -> LoRAConfig:
    """Our ``LoRAConfig`` equivalent to a PEFT ``adapter_config.json``."""
    if peft_cfg.get('peft_type', 'LORA') != 'LORA':
        raise ValueError(f'Only LoRA adapters can be loaded, this one is {peft_cfg.get("peft_type")!r}.')
    targets = peft_cfg['target_modules']
    targets = [f're:{targets}'] if isinstance(targets, str) else list(targets)
    exclude = peft_cfg.get('exclude_modules') or []
    exclude = [f're:{exclude}'] if isinstance(exclude, str) else list(exclude)
    return LoRAConfig(
        r=int(peft_cfg['r']), alpha=peft_cfg['lora_alpha'], dropout=peft_cfg.get('lora_dropout', 0.0),
        targets=targets, exclude=exclude, use_rslora=bool(peft_cfg.get('use_rslora', False)),
        rank_pattern={_peft_pattern(k): v for k, v in (peft_cfg.get('rank_pattern') or {}).items()},
        alpha_pattern={_peft_pattern(k): v for k, v in (peft_cfg.get('alpha_pattern') or {}).items()},
        modules_to_save=list(peft_cfg.get('modules_to_save') or []),
        base_model_name_or_path=peft_cfg.get('base_model_name_or_path'))


def read_adapter(path: Union[str, Path]) -> 'tuple[Dict[str, Tensor], Dict[str, Any], Optional[LoRAConfig]]':
    """Read an adapter folder: ``(tensors, PEFT config dict, our LoRAConfig if it was saved by us)``.

    Raises:
        FileNotFoundError: naming the missing file.
        ValueError: naming the file that cannot be parsed.
    """
    from safetensors import safe_open

    path = Path(path)
    weights, config_file = path / WEIGHTS_NAME, path / CONFIG_NAME
    for file in (weights, config_file):
        if not file.is_file():
            raise FileNotFoundError(f'Adapter file {file} does not exist.')
    try:
        peft_cfg = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f'Adapter config {config_file} is not valid JSON: {err}.') from None
    try:
        with safe_open(str(weights), framework='pt') as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
            metadata = handle.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for corrupt headers/data
        raise ValueError(f'Adapter weights {weights} cannot be read ({type(err).__name__}: {err}).') from None
    own = LoRAConfig.build(json.loads(metadata[_METADATA_KEY])) if _METADATA_KEY in metadata else None
    return tensors, peft_cfg, own


def load_adapter(model: nn.Module, path: Union[str, Path], adapter_name: str = 'default') -> nn.Module:
    """Load an adapter folder (ours or PEFT's) into ``model`` as ``adapter_name``.

    If the model does not have that adapter yet, it is created from the saved config first (our full config when
    the file is ours, the PEFT fields otherwise). Every tensor in the file must find its place.

    Raises:
        ValueError: if keys are missing or unexpected (they are listed) or shapes differ.
    """
    tensors, peft_cfg, own = read_adapter(path)
    layers = dict(iter_lora_layers(model))
    if not any(adapter_name in layer.lora_A for layer in layers.values()):
        apply_lora(model, own or config_from_peft(peft_cfg), adapter_name)
        layers = dict(iter_lora_layers(model))
    targets: Dict[str, Tensor] = {}
    for name, layer in layers.items():
        if adapter_name in layer.lora_A:
            targets[f'{PEFT_PREFIX}{name}.lora_A.weight'] = layer.lora_A[adapter_name].weight
            targets[f'{PEFT_PREFIX}{name}.lora_B.weight'] = layer.lora_B[adapter_name].weight
    for name, module in _saved_modules(model).items():
        for key, value in module.state_dict(keep_vars=True).items():
            targets[f'{PEFT_PREFIX}{name}.{key}'] = value
    missing = sorted(set(targets) - set(tensors))
    unexpected = sorted(set(tensors) - set(targets))
    if missing or unexpected:
        raise ValueError(f'Adapter {path} does not fit the model: missing keys {missing[:10]}'
                         f'{" ..." if len(missing) > 10 else ""}, unexpected keys {unexpected[:10]}'
                         f'{" ..." if len(unexpected) > 10 else ""}.')
    with torch.no_grad():
        for key, dest in targets.items():
            if dest.shape != tensors[key].shape:
                raise ValueError(f'Adapter {path}: {key} has shape {tuple(tensors[key].shape)}, '
                                 f'the model expects {tuple(dest.shape)}.')
            dest.copy_(tensors[key])
    return model


def merge_lora(model: nn.Module, adapter_names: Optional[Sequence[str]] = None) -> nn.Module:
    """Fold the active (or the named) adapters into the base weights of every LoRA layer."""
    for _, layer in iter_lora_layers(model):
        names = [n for n in (adapter_names or [layer.active_adapter]) if n in layer.lora_A]
        if names:
            layer.merge(names)
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Undo every merge in ``model``."""
    for _, layer in iter_lora_layers(model):
        layer.unmerge()
    return model


def merge_and_unload(model: nn.Module, requantize: bool = False) -> nn.Module:
    """Merge the active adapters and replace every LoRA layer by its base layer, in place.

    A quantized base is dequantized and the update added in float32; by default the result is a float
    ``nn.Linear`` (exact merge, float memory). With ``requantize=True`` it is quantized again with the same
    bitsandbytes settings (small memory, adds one more rounding of the weights).
    """
    for name, layer in list(iter_lora_layers(model)):
        if is_quantized(layer.base_layer) and not requantize:
            base = dequantize_linear(layer.base_layer)
            if not layer.merged and not layer.adapters_disabled and layer.active_adapter in layer.lora_A:
                with torch.no_grad():
                    base.weight += layer.delta_weight(layer.active_adapter).to(base.weight.device)
        else:
            if not layer.adapters_disabled and layer.active_adapter in layer.lora_A:
                layer.merge()
            base = layer.base_layer
        parent_name, _, attr = name.rpartition('.')
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, base)
    if hasattr(model, CONFIGS_ATTR):
        object.__delattr__(model, CONFIGS_ATTR)
    return model


def set_adapter(model: nn.Module, adapter_name: str) -> None:
    """Activate ``adapter_name`` everywhere (layers without it use their base); only its parameters train."""
    layers = [layer for _, layer in iter_lora_layers(model)]
    if not any(adapter_name in layer.lora_A for layer in layers):
        names = sorted({n for layer in layers for n in layer.adapter_names})
        raise KeyError(f'No adapter named {adapter_name!r}; the model has {names}.')
    for layer in layers:
        layer.set_adapter(adapter_name)


@contextmanager
def disable_adapters(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block the model computes with its base weights only (merged adapters are unmerged)."""
    layers = [layer for _, layer in iter_lora_layers(model)]
    previous = [layer.adapters_disabled for layer in layers]
    for layer in layers:
        layer.adapters_disabled = True
    try:
        yield model
    finally:
        for layer, state in zip(layers, previous):
            layer.adapters_disabled = state


def has_lora(model: nn.Module) -> bool:
    """Whether ``model`` contains at least one LoRA layer."""
    return any(isinstance(m, LoRALayer) for m in model.modules())


def trainable_state_dict(model: nn.Module) -> Dict[str, Tensor]:
    """``model.state_dict()`` restricted to trainable parameters and buffers (what a LoRA checkpoint keeps)."""
    keep = {name for name, p in model.named_parameters() if p.requires_grad}
    keep |= {name for name, _ in model.named_buffers()}
    return {k: v for k, v in model.state_dict().items() if k in keep}

