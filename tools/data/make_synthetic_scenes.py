"""Write synthetic multi-view scenes in ETH3D's layout (COLMAP text + binary, PNG images, raw depth) for the depth
configs, and the stand-in pretrained weights of the tiny VGGT-shaped model.

    python tools/data/make_synthetic_scenes.py --out data/synthetic_scenes

Each scene (``OUT/scene_XX``) is a ray-cast room with a box, seen from cameras on an arc:
``images/dslr_images_undistorted/frame_XXXX.png``, ``dslr_calibration_undistorted/{cameras,images,points3D}.{txt,bin}``
and ``ground_truth_depth/dslr_images/frame_XXXX.png`` (raw float32, ``inf`` = no surface, as ETH3D). ``OUT/
vggt_tiny_init.pth`` is a seeded initialisation of the ``--config`` model (without LoRA), standing in for a
converted VGGT checkpoint so the frozen base is rebuilt at construction exactly as with real weights.
"""
import argparse
import sys
from pathlib import Path
from typing import List, Optional

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402

import opentad_lora.models  # noqa: E402,F401  (registers the depth model)
from opentad_lora.datasets.depth.synthetic import make_synthetic_scenes  # noqa: E402
from opentad_lora.engine.checkpoint import atomic_torch_save  # noqa: E402
from opentad_lora.registry import MODELS  # noqa: E402

DEFAULT_CONFIG = REPO_ROOT / 'configs' / 'depth' / 'vggt_tiny_lora_synthetic_strategy_a.py'
INIT_NAME = 'vggt_tiny_init.pth'


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Render synthetic ETH3D-layout scenes and a seeded tiny VGGT file')
    parser.add_argument('--out', default='data/synthetic_scenes', help='output folder')
    parser.add_argument('--num-scenes', type=int, default=2)
    parser.add_argument('--num-frames', type=int, default=12, help='frames per scene')
    parser.add_argument('--height', type=int, default=42)
    parser.add_argument('--width', type=int, default=56)
    parser.add_argument('--points-per-image', type=int, default=200, help='3D points seeded from each image')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--config', default=str(DEFAULT_CONFIG), help=f'model config written to OUT/{INIT_NAME}')
    parser.add_argument('--no-init', action='store_true', help=f'do not write {INIT_NAME}')
    return parser.parse_args(argv)


def write_init_checkpoint(model_cfg: dict, path: Path, seed: int) -> None:
    """Save the state dict of the seeded, LoRA-free ``model_cfg`` (the layout ``pretrained=`` loads)."""
    torch.manual_seed(seed)
    atomic_torch_save(MODELS.build(dict(model_cfg, lora=None, pretrained=None)).state_dict(), path)


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    scenes = make_synthetic_scenes(str(out), args.num_scenes, args.seed, num_frames=args.num_frames,
                                   height=args.height, width=args.width, points_per_image=args.points_per_image)
    message = f'Wrote {len(scenes)} scenes of {args.num_frames} {args.width}x{args.height} frames to {out}'
    if not args.no_init:
        write_init_checkpoint(Config.fromfile(args.config).model.to_dict(), out / INIT_NAME, args.seed)
        message += f' and {out / INIT_NAME}'
    print(message + '.')


if __name__ == '__main__':
    main()
