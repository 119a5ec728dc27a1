"""Write the synthetic CLIP data and its stand-in pretrained CLIP.

    python tools/data/make_synthetic_clip.py --out data/synthetic_clip

Writes ``OUT/{train,val}/class_<k>/<i>.png`` (real PNGs of coloured stripe patterns), ``OUT/{train,val}.csv``,
``OUT/classnames.txt`` (the prompt words), ``OUT/bpe_tiny.txt`` (a 1024-id BPE merges file covering the prompts) and
``OUT/pretrained_clip_openai.pth``: a seeded initialisation of the config's CLIP saved in OpenAI's key layout
(``visual.transformer.resblocks.N.attn.in_proj_weight``...), standing in for a downloaded checkpoint so the frozen
base is rebuilt through the real OpenAI loader. Deterministic for a given ``--seed``.

Its requirements (the ``regex`` package of CLIP's pre-tokenizer, OpenCV for the PNGs) are checked before anything is
written, and a run that fails part-way removes the folder it created, so a failed run never leaves half the data.
"""
import argparse
import shutil
import sys
from pathlib import Path
from typing import List, Optional

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402

from opentad_lora.datasets.clip import write_synthetic_clip_data  # noqa: E402
from opentad_lora.engine.checkpoint import atomic_torch_save  # noqa: E402
from opentad_lora.models.clip import ViTLoRA, ours_to_openai, resolve_arch  # noqa: E402
from opentad_lora.models.clip.tokenizer import pre_tokenize  # noqa: E402

DEFAULT_CONFIG = REPO_ROOT / 'configs' / 'clip' / 'clip_tiny_lora_synthetic.py'
PRETRAINED_NAME = 'pretrained_clip_openai.pth'


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Write synthetic CLIP data and a seeded OpenAI-layout CLIP file')
    parser.add_argument('--out', default='data/synthetic_clip', help='output folder')
    parser.add_argument('--config', default=str(DEFAULT_CONFIG), help='config whose model.clip.arch is initialised')
    parser.add_argument('--num-classes', type=int, default=4)
    parser.add_argument('--train-per-class', type=int, default=32)
    parser.add_argument('--val-per-class', type=int, default=16)
    parser.add_argument('--noise-std', type=float, default=20.0, help='Gaussian pixel noise (0-255 scale)')
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args(argv)


def write_pretrained_clip(arch: dict, path: Path, seed: int) -> None:
    """Save a seeded random CLIP of ``arch`` in OpenAI's layout."""
    torch.manual_seed(seed)
    atomic_torch_save(ours_to_openai(ViTLoRA(arch).state_dict()), path)


def check_requirements() -> None:
    """Stop (exit status 1, nothing written) when a package the data needs is missing."""
    try:
        import cv2  # noqa: F401  (writes the PNGs)
        pre_tokenize('a photo of red stripes.')  # the BPE file is built with CLIP's pre-tokenizer (regex)
    except ImportError as err:
        raise SystemExit(f'make_synthetic_clip: {err}. Nothing was written.') from None


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    model_cfg = Config.fromfile(args.config).model.to_dict()
    arch = model_cfg['clip']['arch']
    img_size = resolve_arch(arch)['vision']['image_size']
    check_requirements()
    out = Path(args.out)
    created = not out.exists()
    try:
        info = write_synthetic_clip_data(out, args.num_classes, args.train_per_class, args.val_per_class, img_size,
                                         args.noise_std, args.seed)
        write_pretrained_clip(arch, out / PRETRAINED_NAME, args.seed)
    except BaseException:
        if created:  # leave no half-written data behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    print(f'Wrote {info["train"]} train and {info["val"]} val PNGs ({args.num_classes} classes, {img_size}px), '
          f'CSV lists, classnames.txt, {info["bpe_path"]} and {out / PRETRAINED_NAME}.')
    if model_cfg.get('class_names') != info['class_names']:
        print(f'Note: set model.class_names={info["class_names"]} in {args.config} to match this data.')


if __name__ == '__main__':
    main()
