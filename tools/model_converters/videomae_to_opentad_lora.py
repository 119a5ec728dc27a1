"""Convert a VideoMAE / VideoMAE-v2 / mmaction2 (OpenTAD) checkpoint to ``VisionTransformerAdapter`` keys.

Usage::

    python tools/model_converters/videomae_to_opentad_lora.py src.pth dst.pth [--strict]

Layouts read (also nested under ``model``/``module``/``state_dict``, with ``module.`` DDP prefixes):

* MCG-NJU VideoMAE and OpenGVLab VideoMAE-v2 fine-tuned models: ``patch_embed.proj`` (Conv3d), ``blocks.N.norm1``,
  ``attn.qkv.weight`` + ``attn.q_bias``/``attn.v_bias``, ``attn.proj``, ``norm2``, ``mlp.fc1``/``mlp.fc2``,
  ``gamma_1``/``gamma_2`` (layer scale), ``fc_norm`` or ``norm``, ``head`` (dropped);
* their pre-training checkpoints: the same under ``encoder.``; ``decoder.``, ``encoder_to_decoder``, ``mask_token``
  are dropped;
* mmaction2 / OpenTAD (``backbone.`` prefix, ``patch_embed.projection``, ``mlp.layers.0.0``/``mlp.layers.1``, the
  sin-cos ``pos_embed`` buffer, ``cls_head`` dropped; OpenTAD adapters ``blocks.N.adapter.*`` are kept).

A fixed sin-cos ``pos_embed`` is dropped (the backbone recomputes it); a learned one is kept (build the backbone with
``use_learnable_pos_emb=True``). Keys that have no place in our model (e.g. VideoMAE-v2's cosine-attention
``attn.scale``) are listed; ``--strict`` refuses to write the file when there are any.
"""
import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from opentad_lora.engine.checkpoint import load_checkpoint_file  # noqa: E402
from opentad_lora.models.backbones.video_vit import ARCHS, videomae_sincos_table  # noqa: E402
from opentad_lora.models.backbones.vit_pretrained import extract_state_dict  # noqa: E402

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


def backbone_args(state: Mapping[str, Tensor]) -> Dict[str, Any]:
    """The ``VisionTransformerAdapter`` arguments a converted state dict needs (sizes read off the tensors)."""
    patch = state['patch_embed.proj.weight']
    embed_dims = patch.shape[0]
    depth = 1 + max(int(k.split('.')[1]) for k in state if k.startswith('blocks.'))
    args: Dict[str, Any] = dict(embed_dims=embed_dims, depth=depth, patch_size=patch.shape[-1],
                                tubelet_size=patch.shape[2],
                                mlp_ratio=state['blocks.0.mlp.fc1.weight'].shape[0] / embed_dims,
                                qkv_bias='blocks.0.attn.q_bias' in state)
    arch = next((name for name, a in ARCHS.items() if (a['embed_dims'], a['depth']) == (embed_dims, depth)), None)
    if arch:
        args['arch'] = arch
    if 'blocks.0.ls1.gamma' in state:
        args['init_values'] = 'any float (the file sets gamma)'
    if 'pos_embed' in state:
        args['use_learnable_pos_emb'] = True
    return args


def load_source(path: str) -> Dict[str, Tensor]:
    """Tensors of a VideoMAE-family file: the safe loader, plus the ``args`` Namespace VideoMAE's files carry."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        checkpoint = load_checkpoint_file(path)
    state = extract_state_dict(checkpoint, prefix='') if isinstance(checkpoint, Mapping) else {}
    if not state:
        raise ValueError(f'{path} holds no state dict of tensors')
    return state


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('src', help='VideoMAE / VideoMAE-v2 / mmaction2 checkpoint')
    parser.add_argument('dst', help='output checkpoint for VisionTransformerAdapter(pretrained=...)')
    parser.add_argument('--strict', action='store_true', help='write nothing if any source key is unmapped')
    args = parser.parse_args(argv)
    try:
        result = convert_videomae_state_dict(load_source(args.src))
        if 'patch_embed.proj.weight' not in result.state_dict:
            raise ValueError(f'{args.src} has no VideoMAE patch embedding (patch_embed.proj or '
                             f'patch_embed.projection); unmapped keys: {result.unmapped[:8]}')
    except (OSError, RuntimeError, ValueError) as err:  # missing, corrupt or unsafe file, or not a VideoMAE
        print(f'error: {err}', file=sys.stderr)
        return 2
    print(f'{args.src}: {len(result.state_dict)} tensors mapped, {len(result.dropped)} dropped, '
          f'{len(result.unmapped)} unmapped')
    if result.unmapped:
        print('unmapped keys (no counterpart in VisionTransformerAdapter):\n  ' + '\n  '.join(result.unmapped))
        if args.strict:
            print('--strict: nothing written')
            return 1
    Path(args.dst).parent.mkdir(parents=True, exist_ok=True)
    torch.save(dict(state_dict=result.state_dict, meta=dict(converted_from=str(args.src))), args.dst)
    print(f'wrote {args.dst}; backbone arguments: {backbone_args(result.state_dict)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
