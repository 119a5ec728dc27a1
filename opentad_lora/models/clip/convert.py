"""CLIP checkpoint layouts: OpenAI ``clip/model.py`` and HF ``CLIPModel``, mapped to our (HF-named) modules.

OpenAI -> ours: each ``transformer.resblocks.N.attn.in_proj_{weight,bias}`` is split by rows into
``q_proj``/``k_proj``/``v_proj`` (rows [0:d], [d:2d], [2d:3d], the order ``nn.MultiheadAttention`` uses);
``ln_1/ln_2 -> layer_norm1/2``, ``mlp.c_fc/c_proj -> mlp.fc1/fc2``; ``visual.proj`` and ``text_projection`` are
(width, embed) matrices used as ``x @ proj``, i.e. the transposed weights of our bias-free projection Linears.
HF -> ours is the identity (minus HF's ``position_ids`` buffers).
"""
import re
import zipfile
from pathlib import Path
from typing import Callable, Dict, Union

import torch
from torch import Tensor

OPENAI_META_KEYS = ('input_resolution', 'context_length', 'vocab_size')  # ints in OpenAI's TorchScript archives
_BLOCK = {'attn.out_proj': 'self_attn.out_proj', 'ln_1': 'layer_norm1', 'ln_2': 'layer_norm2',
          'mlp.c_fc': 'mlp.fc1', 'mlp.c_proj': 'mlp.fc2'}
_QKV = ('q_proj', 'k_proj', 'v_proj')
_TOP = {
    'visual.conv1.weight': 'vision_model.embeddings.patch_embedding.weight',
    'visual.class_embedding': 'vision_model.embeddings.class_embedding',
    'visual.positional_embedding': 'vision_model.embeddings.position_embedding.weight',
    'visual.ln_pre.weight': 'vision_model.pre_layrnorm.weight', 'visual.ln_pre.bias': 'vision_model.pre_layrnorm.bias',
    'visual.ln_post.weight': 'vision_model.post_layernorm.weight',
    'visual.ln_post.bias': 'vision_model.post_layernorm.bias',
    'token_embedding.weight': 'text_model.embeddings.token_embedding.weight',
    'positional_embedding': 'text_model.embeddings.position_embedding.weight',
    'ln_final.weight': 'text_model.final_layer_norm.weight', 'ln_final.bias': 'text_model.final_layer_norm.bias',
    'logit_scale': 'logit_scale',
}
_TRANSPOSED = {'visual.proj': 'visual_projection.weight', 'text_projection': 'text_projection.weight'}
_RESBLOCK = re.compile(r'(visual\.)?transformer\.resblocks\.(\d+)\.(.+)')
_LAYER = re.compile(r'(vision|text)_model\.encoder\.layers\.(\d+)\.(.+)')


def detect_layout(state: Dict[str, Tensor]) -> str:
    """``'openai'`` or ``'hf'`` from the keys of a CLIP state dict.

    Raises:
        ValueError: for OpenAI's ResNet CLIPs (not ViT) and for state dicts of neither layout.
    """
    if 'visual.conv1.weight' in state:
        return 'openai'
    if any(k.startswith('visual.layer1.') for k in state):
        raise ValueError('This is an OpenAI ResNet CLIP checkpoint; only ViT CLIP models are supported.')
    if 'vision_model.embeddings.patch_embedding.weight' in state or 'text_model.embeddings.token_embedding.weight' \
            in state:
        return 'hf'
    raise ValueError(f'Not a CLIP state dict of the OpenAI or HF layout; first keys: {list(state)[:5]}.')


def openai_to_ours(state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Map an OpenAI CLIP state dict to our names; every key must be mapped.

    Raises:
        KeyError: listing the keys that have no counterpart.
    """
    out, unknown = {}, []
    for key, value in state.items():
        if key in OPENAI_META_KEYS:
            continue
        block = _RESBLOCK.fullmatch(key)
        if block:
            prefix = f"{'vision' if block.group(1) else 'text'}_model.encoder.layers.{block.group(2)}."
            rest = block.group(3)
            if rest in ('attn.in_proj_weight', 'attn.in_proj_bias'):
                kind = rest.rsplit('_', 1)[1]
                for name, chunk in zip(_QKV, value.chunk(3, dim=0)):
                    out[f'{prefix}self_attn.{name}.{kind}'] = chunk.clone()
                continue
            module, _, param = rest.rpartition('.')
            if module in _BLOCK:
                out[f'{prefix}{_BLOCK[module]}.{param}'] = value
                continue
        elif key in _TOP:
            out[_TOP[key]] = value
            continue
        elif key in _TRANSPOSED:
            out[_TRANSPOSED[key]] = value.t().contiguous()
            continue
        unknown.append(key)
    if unknown:
        raise KeyError(f'OpenAI CLIP keys without a counterpart: {unknown[:10]}{" ..." if len(unknown) > 10 else ""}')
    return out


def ours_to_openai(state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """The inverse of :func:`openai_to_ours` (to export, e.g. merged LoRA weights, for OpenAI-layout code).

    Raises:
        KeyError: listing keys that have no OpenAI counterpart (e.g. unmerged LoRA tensors).
    """
    top = {v: k for k, v in _TOP.items()}
    transposed = {v: k for k, v in _TRANSPOSED.items()}
    block = {v: k for k, v in _BLOCK.items()}
    out, unknown, qkv = {}, [], {}
    for key, value in state.items():
        layer = _LAYER.fullmatch(key)
        if layer:
            prefix = f"{'visual.' if layer.group(1) == 'vision' else ''}transformer.resblocks.{layer.group(2)}."
            module, _, param = layer.group(3).rpartition('.')
            if module.startswith('self_attn.') and module.split('.', 1)[1] in _QKV:
                qkv.setdefault(f'{prefix}attn.in_proj_{param}', {})[module.split('.', 1)[1]] = value
                continue
            if module in block:
                out[f'{prefix}{block[module]}.{param}'] = value
                continue
        elif key in top:
            out[top[key]] = value
            continue
        elif key in transposed:
            out[transposed[key]] = value.t().contiguous()
            continue
        unknown.append(key)
    for key, parts in qkv.items():
        if set(parts) != set(_QKV):
            unknown.append(f'{key} (has only {sorted(parts)})')
            continue
        out[key] = torch.cat([parts[name] for name in _QKV], dim=0)
    if unknown:
        raise KeyError(f'Keys without an OpenAI CLIP counterpart: {unknown[:10]}{" ..." if len(unknown) > 10 else ""}')
    return out


def hf_to_ours(state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """HF ``CLIPModel`` keys are ours; drop the ``position_ids`` buffers older HF versions saved."""
    return {k: v for k, v in state.items() if not k.endswith('embeddings.position_ids')}


CONVERTERS: Dict[str, Callable[[Dict[str, Tensor]], Dict[str, Tensor]]] = dict(openai=openai_to_ours, hf=hf_to_ours)


def _unwrap(obj: object, path: Path) -> Dict[str, Tensor]:
    for key in ('state_dict', 'model'):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ValueError(f'CLIP checkpoint {path} does not hold a state dict (got {type(obj).__name__}).')
    return obj


def read_clip_checkpoint(path: Union[str, Path]) -> Dict[str, Tensor]:
    """Read a CLIP state dict from ``.safetensors``, a ``torch.save`` file (weights-only) or an OpenAI TorchScript
    archive (``ViT-B-32.pt`` as OpenAI distributes it; read with ``torch.jit.load``, which runs no pickle code).

    Raises:
        FileNotFoundError / ValueError / ``opentad_lora.engine.checkpoint.CheckpointError``: naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'CLIP checkpoint {path} does not exist.')
    if path.suffix == '.safetensors':
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except Exception as err:  # safetensors raises its own error types
            raise ValueError(f'CLIP checkpoint {path} cannot be read ({type(err).__name__}: {err}).') from None
    if _is_torchscript(path):
        try:
            return dict(torch.jit.load(str(path), map_location='cpu').state_dict())
        except Exception as err:
            raise ValueError(f'CLIP checkpoint {path} looks like a TorchScript archive but cannot be loaded '
                             f'({type(err).__name__}: {err}).') from None
    from opentad_lora.engine.checkpoint import load_checkpoint_file
    return _unwrap(load_checkpoint_file(str(path)), path)


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives (OpenAI's released ``.pt`` files) are zips with a ``code/`` folder."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any('/code/' in name for name in archive.namelist())


def convert_clip_state_dict(state: Dict[str, Tensor], layout: str = 'auto') -> Dict[str, Tensor]:
    """Our-named state dict from an OpenAI or HF one (``layout='auto'`` detects which)."""
    layout = detect_layout(state) if layout == 'auto' else layout
    if layout not in CONVERTERS:
        raise ValueError(f"Unknown CLIP checkpoint layout {layout!r}; use 'auto', 'openai' or 'hf'.")
    return CONVERTERS[layout](state)
