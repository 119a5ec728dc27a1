"""Map VideoMAE-family checkpoints (MCG-NJU, OpenGVLab VideoMAE-v2, mmaction2/OpenTAD) onto our VideoMAE keys.

Used by :meth:`VisionTransformerAdapter.load_pretrained` (files load as their users keep them, converted in memory)
and by ``tools/model_converters/videomae_to_opentad_lora.py`` (which saves a converted copy).

Layouts read (also nested under ``model``/``module``/``state_dict``, with ``module.`` DDP prefixes):

* MCG-NJU VideoMAE and OpenGVLab VideoMAE-v2 fine-tuned models: ``patch_embed.proj`` (Conv3d), ``blocks.N.norm1``,
  ``attn.qkv.weight`` + ``attn.q_bias``/``attn.v_bias``, ``attn.proj``, ``norm2``, ``mlp.fc1``/``mlp.fc2``,
  ``gamma_1``/``gamma_2`` (layer scale), ``fc_norm`` or ``norm``, ``head`` (dropped);
* their pre-training checkpoints: the same under ``encoder.``; ``decoder.``, ``encoder_to_decoder``, ``mask_token``
  are dropped;
* mmaction2 / OpenTAD (``backbone.`` prefix, ``patch_embed.projection``, ``mlp.layers.0.0``/``mlp.layers.1``, the
  sin-cos ``pos_embed`` buffer, ``cls_head`` dropped; OpenTAD adapters ``blocks.N.adapter.*`` are kept), e.g.
  OpenTAD's ``pretrained/vit-small-p16_videomae-k400-pre_16x4x1_kinetics-400_my.pth``;
* ours (the identity).

A fixed sin-cos ``pos_embed`` is dropped (the backbone recomputes it); a learned one is kept.
"""
import argparse
import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping

import torch
from torch import Tensor

from opentad_lora.engine.checkpoint import load_checkpoint_file
from .video_vit import videomae_sincos_table
from .vit_pretrained import extract_state_dict

WRAPPER_PREFIXES = ('module', 'model', 'backbone', 'encoder')
DROPPED = re.compile(r'(decoder|encoder_to_decoder|mask_token|head|cls_head|fc_dropout|head_dropout)(\..*)?')
RENAMES = (
    (re.compile(r'patch_embed\.projection\.'), 'patch_embed.proj.'),
    (re.compile(r'(blocks\.\d+)\.mlp\.layers\.0\.0\.'), r'\1.mlp.fc1.'),
    (re.compile(r'(blocks\.\d+)\.mlp\.layers\.1\.'), r'\1.mlp.fc2.'),
    (re.compile(r'(blocks\.\d+)\.gamma_1$'), r'\1.ls1.gamma'),
    (re.compile(r'(blocks\.\d+)\.gamma_2$'), r'\1.ls2.gamma'),
)
OUR_KEYS = re.compile(
    r'pos_embed|patch_embed\.proj\.(weight|bias)|(norm|fc_norm)\.(weight|bias)'
    r'|blocks\.\d+\.((norm1|norm2|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)|attn\.(qkv\.weight|q_bias|v_bias)'
    r'|ls[12]\.gamma|adapter\.((down_proj|up_proj|dwconv|conv)\.(weight|bias)|gamma))')


@dataclass
class Conversion:
    """Result of :func:`convert_videomae_state_dict`.

    Attributes:
        state_dict: Our keys -> tensors.
        renamed: Source key -> our key, for every kept tensor.
        dropped: Source keys deliberately left out (decoder, classifier head, mask token, fixed sin-cos table).
        unmapped: Source keys with no counterpart in our model.
    """

    state_dict: Dict[str, Tensor] = field(default_factory=dict)
    renamed: Dict[str, str] = field(default_factory=dict)
    dropped: List[str] = field(default_factory=list)
    unmapped: List[str] = field(default_factory=list)

    def summary(self) -> str:
        """How many tensors were mapped, how many keys renamed (with an example) and which were dropped."""
        moved = [(src, dst) for src, dst in self.renamed.items() if src != dst]
        text = f'{len(self.state_dict)} tensors mapped'
        if moved:
            text += f', {len(moved)} renamed (e.g. {moved[0][0]} -> {moved[0][1]})'
        if self.dropped:
            text += f', dropped {_short(self.dropped)}'
        return text


def _short(keys: List[str], limit: int = 6) -> str:
    return ', '.join(keys[:limit]) + (f' and {len(keys) - limit} more' if len(keys) > limit else '')


def strip_wrappers(key: str) -> str:
    """Remove leading ``module.``/``model.``/``backbone.``/``encoder.`` components (any nesting of them)."""
    parts = key.split('.')
    while len(parts) > 1 and parts[0] in WRAPPER_PREFIXES:
        parts = parts[1:]
    return '.'.join(parts)


def is_sincos_table(value: Tensor) -> bool:
    """Whether a (1, N, C) tensor is VideoMAE's fixed sin-cos table for N tokens."""
    if value.dim() != 3 or value.shape[0] != 1 or value.shape[2] % 2:
        return False
    return torch.allclose(value.float(), videomae_sincos_table(value.shape[1], value.shape[2]), atol=1e-4)


def convert_videomae_state_dict(state: Mapping[str, Tensor]) -> Conversion:
    """Map a VideoMAE-family state dict to our keys (see the module docstring for the layouts).

    Raises:
        ValueError: if two source keys land on the same key of ours.
    """
    result = Conversion()
    for src_key, value in state.items():
        key = strip_wrappers(src_key)
        if DROPPED.fullmatch(key) or (key == 'pos_embed' and is_sincos_table(value)):
            result.dropped.append(src_key)
            continue
        for pattern, repl in RENAMES:
            key = pattern.sub(repl, key)
        if not OUR_KEYS.fullmatch(key):
            result.unmapped.append(src_key)
            continue
        if key in result.state_dict:
            first = next(s for s, k in result.renamed.items() if k == key)
            raise ValueError(f'source keys {first!r} and {src_key!r} both map to {key!r}')
        result.state_dict[key] = value
        result.renamed[src_key] = key
    return result


def read_videomae_file(path: str) -> Dict[str, Tensor]:
    """Tensors of a VideoMAE-family file: the safe loader, plus the ``args`` Namespace VideoMAE's files carry.

    Raises:
        ValueError: the file holds no state dict of tensors.
    """
    with torch.serialization.safe_globals([argparse.Namespace]):  # attribute bag: setting fields runs no code
        checkpoint = load_checkpoint_file(path)
    state = extract_state_dict(checkpoint, prefix='') if isinstance(checkpoint, Mapping) else {}
    if not state:
        raise ValueError(f'{path} holds no state dict of tensors')
    return state
