"""Convert an official VGGT checkpoint (``facebook/VGGT-1B`` ``model.pt``) for ``DepthEstimator(pretrained=...)``.

Usage::

    python tools/model_converters/vggt_to_opentad_lora.py model.pt checkpoints/vggt_1b.pth \
        [--config configs/depth/vggt_dpt_lora_eth3d_strategy_b.py] [--no-camera-head] [--dtype float32]

The official state dict holds ``aggregator.*`` (DINOv2-L patch embedding, camera/register tokens, frame/global
blocks), ``camera_head.*``, ``depth_head.*``, ``point_head.*`` and ``track_head.*``. ``DepthEstimator`` keeps the
official names of the parts it builds, so the point and track heads (and, with ``--no-camera-head``, the camera
head) are dropped and every other key is kept as it is. With ``--config`` the result is checked against that
config's model (built on the meta device, so even VGGT-1B costs no memory): every key must exist with the same
shape, and nothing may be missing; the file is not written otherwise. ``.safetensors`` outputs are supported.
"""
import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from opentad_lora.models.depth.depth_estimator import load_weights_file  # noqa: E402
from opentad_lora.models.depth.vggt_checkpoint import convert_vggt_state_dict  # noqa: E402


def check_against_config(state: Dict[str, Tensor], config: str, camera_head: bool) -> List[str]:
    """Problems of ``state`` as weights of the LoRA-free model of ``config`` (empty when it fits exactly)."""
    from mmengine.config import Config

    import opentad_lora.models  # noqa: F401  (registers the depth model)
    from opentad_lora.registry import MODELS
    model_cfg = Config.fromfile(config).model.to_dict()
    model_cfg.update(lora=None, pretrained=None)
    if not camera_head:
        model_cfg['camera_head'] = None
    with torch.device('meta'):
        expected = MODELS.build(model_cfg).state_dict()
    problems = [f'missing {k}' for k in expected if k not in state]
    problems += [f'unexpected {k}' for k in state if k not in expected]
    problems += [f'shape of {k}: {tuple(v.shape)} vs {tuple(expected[k].shape)} in the model'
                 for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    return problems


def save(state: Dict[str, Tensor], path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if path.endswith('.safetensors'):
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:
        from opentad_lora.engine.checkpoint import atomic_torch_save
        atomic_torch_save(state, path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('src', help='official VGGT checkpoint (model.pt, .pth or .safetensors)')
    parser.add_argument('dst', help='output file (.pth or .safetensors)')
    parser.add_argument('--config', help='check the result against the model of this config')
    parser.add_argument('--no-camera-head', action='store_true', help='drop the camera head too')
    parser.add_argument('--dtype', choices=['float32', 'float16', 'bfloat16'], help='cast floating tensors')
    args = parser.parse_args(argv)
    keep = ['aggregator', 'depth_head'] + ([] if args.no_camera_head else ['camera_head'])
    try:
        state, dropped = convert_vggt_state_dict(load_weights_file(args.src), keep)
    except ValueError as err:
        raise SystemExit(f'{args.src}: {err}') from None
    if args.dtype:
        dtype = getattr(torch, args.dtype)
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    if args.config:
        problems = check_against_config(state, args.config, not args.no_camera_head)
        if problems:
            raise SystemExit(f'{args.src} does not fit {args.config} ({len(problems)} problems): '
                             + '; '.join(problems[:10]))
    save(state, args.dst)
    heads = sorted({k.split('.', 1)[0] for k in dropped})
    print(f'Wrote {len(state)} tensors to {args.dst}; dropped {len(dropped)} tensors of {heads or "nothing"}.')
    return 0


if __name__ == '__main__':
    sys.exit(main())
