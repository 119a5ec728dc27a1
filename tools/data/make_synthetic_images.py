"""Write the quickstart's synthetic image-classification data and its stand-in pretrained ViT.

    python tools/data/make_synthetic_images.py --out data/synthetic_cls

Writes ``OUT/{train,val}/class_<k>/<i>.png`` (K classes of distinct colour/stripe patterns plus noise, real PNG
files read back by ``ImageFolderDataset``) and ``OUT/pretrained_vit.pth``: a seeded initialisation of the config's
backbone, standing in for a downloaded checkpoint so the frozen base can be rebuilt at construction exactly as with
real weights. Deterministic for a given ``--seed``.
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

import opentad_lora.models  # noqa: E402,F401  (registers the backbones)
from opentad_lora.datasets.classification import write_synthetic_image_folder  # noqa: E402
from opentad_lora.engine.checkpoint import atomic_torch_save  # noqa: E402
from opentad_lora.registry import MODELS  # noqa: E402

DEFAULT_CONFIG = REPO_ROOT / 'configs' / 'quickstart' / 'vit_lora_synthetic_cls.py'
PRETRAINED_NAME = 'pretrained_vit.pth'


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Write synthetic PNG image-folder data and a seeded ViT file')
    parser.add_argument('--out', default='data/synthetic_cls', help='output folder')
    parser.add_argument('--config', default=str(DEFAULT_CONFIG),
                        help='config whose model.backbone is initialised into pretrained_vit.pth')
    parser.add_argument('--num-classes', type=int, default=4)
    parser.add_argument('--train-per-class', type=int, default=32)
    parser.add_argument('--val-per-class', type=int, default=16)
    parser.add_argument('--img-size', type=int, default=None, help='default: the backbone img_size of --config')
    parser.add_argument('--noise-std', type=float, default=20.0, help='Gaussian pixel noise (0-255 scale)')
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args(argv)


def write_pretrained_backbone(backbone_cfg: dict, path: Path, seed: int) -> None:
    """Save the state dict of a freshly (seeded) initialised backbone in timm's key layout."""
    backbone_cfg = dict(backbone_cfg, pretrained=None)
    torch.manual_seed(seed)
    atomic_torch_save(MODELS.build(backbone_cfg).state_dict(), path)


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    backbone_cfg = Config.fromfile(args.config).model.backbone.to_dict()
    img_size = args.img_size or backbone_cfg.get('img_size')
    if not isinstance(img_size, int):
        raise SystemExit(f'Give --img-size: the backbone img_size of {args.config} is {img_size!r}.')
    out = Path(args.out)
    counts = write_synthetic_image_folder(out, args.num_classes, args.train_per_class, args.val_per_class, img_size,
                                          args.noise_std, args.seed)
    write_pretrained_backbone(backbone_cfg, out / PRETRAINED_NAME, args.seed)
    print(f'Wrote {counts["train"]} train and {counts["val"]} val PNGs ({args.num_classes} classes, '
          f'{img_size}x{img_size}) and {out / PRETRAINED_NAME}.')


if __name__ == '__main__':
    main()
