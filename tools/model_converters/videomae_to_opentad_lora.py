"""Save a VideoMAE / VideoMAE-v2 / mmaction2 (OpenTAD) checkpoint converted to ``VisionTransformerAdapter`` keys.

Usage::

    python tools/model_converters/videomae_to_opentad_lora.py src.pth dst.pth [--strict]

``VisionTransformerAdapter(pretrained=src.pth)`` reads these files directly (converting in memory); this tool is
for keeping a converted copy and for reading the backbone arguments off the tensors. The layouts and key mapping
are those of :mod:`opentad_lora.models.backbones.videomae_pretrained`. Keys that have no place in our model (e.g.
VideoMAE-v2's cosine-attention ``attn.scale``) are listed; ``--strict`` refuses to write the file when there are any.
"""
import argparse
import sys
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from opentad_lora.models.backbones.video_vit import ARCHS  # noqa: E402
from opentad_lora.models.backbones.videomae_pretrained import (  # noqa: E402
    convert_videomae_state_dict, read_videomae_file)


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


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('src', help='VideoMAE / VideoMAE-v2 / mmaction2 checkpoint')
    parser.add_argument('dst', help='output checkpoint for VisionTransformerAdapter(pretrained=...)')
    parser.add_argument('--strict', action='store_true', help='write nothing if any source key is unmapped')
    args = parser.parse_args(argv)
    try:
        result = convert_videomae_state_dict(read_videomae_file(args.src))
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
