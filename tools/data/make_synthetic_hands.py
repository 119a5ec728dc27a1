"""Render synthetic right hands from a MANO-format model into FreiHAND's layout (+ a stand-in HaMeR checkpoint).

    python tools/data/make_synthetic_hands.py data/synthetic_hands --mano data/synthetic_hands/MANO_RIGHT.pkl \
        [--num-train 256] [--num-val 32] [--init-checkpoint configs/hamer/hamer_tiny_lora_synthetic.py]

Writes ``OUT/training_{K,mano,xyz,verts,scale}.json`` + ``OUT/training/rgb/%08d.png``, the same for ``evaluation``,
and ``OUT/mocap.npz`` (unpaired poses for the discriminator). With ``--init-checkpoint CONFIG`` it also writes
``OUT/hamer_tiny_init.ckpt``: a seeded initialisation of the config's model (without LoRA) in the official HaMeR
checkpoint layout, standing in for ``hamer.ckpt`` so the frozen base is rebuilt exactly at construction.
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

import opentad_lora.models  # noqa: E402,F401  (registers the model parts)
from opentad_lora.datasets.hamer import write_synthetic_freihand  # noqa: E402
from opentad_lora.engine.checkpoint import atomic_torch_save  # noqa: E402
from opentad_lora.models.hamer import to_hamer_state_dict  # noqa: E402
from opentad_lora.registry import MODELS  # noqa: E402

INIT_NAME = 'hamer_tiny_init.ckpt'


def write_init_checkpoint(config: str, mano_path: str, path: Path, seed: int) -> None:
    """Build the config's model without LoRA or pretrained file, seeded, and save it in HaMeR's layout."""
    model_cfg = Config.fromfile(config).model.to_dict()
    model_cfg.update(lora=None, pretrained_model_path=None, mano=dict(model_cfg['mano'], model_path=mano_path))
    torch.manual_seed(seed)
    model = MODELS.build(model_cfg)
    atomic_torch_save({'state_dict': to_hamer_state_dict(model), 'hyper_parameters': {'seed': seed}}, path)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description='Render synthetic FreiHAND-layout hands')
    parser.add_argument('out', help='output folder')
    parser.add_argument('--mano', required=True, help='MANO-format model file (.pkl)')
    parser.add_argument('--num-train', type=int, default=256)
    parser.add_argument('--num-val', type=int, default=32)
    parser.add_argument('--image-size', type=int, default=224)
    parser.add_argument('--init-checkpoint', metavar='CONFIG', help='also write OUT/' + INIT_NAME)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    write_synthetic_freihand(out, args.mano, args.num_train, 'training', args.image_size, seed=args.seed)
    write_synthetic_freihand(out, args.mano, args.num_val, 'evaluation', args.image_size, num_mocap=0,
                             seed=args.seed + 1)
    print(f'Wrote {args.num_train} training and {args.num_val} evaluation hands to {out}')
    if args.init_checkpoint:
        write_init_checkpoint(args.init_checkpoint, args.mano, out / INIT_NAME, args.seed)
        print(f'Wrote the stand-in HaMeR checkpoint {out / INIT_NAME}')


if __name__ == '__main__':
    main()
