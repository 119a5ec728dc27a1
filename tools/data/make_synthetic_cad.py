"""Write a synthetic CAD-Recode dataset and a stand-in pretrained tiny LLM.

    python tools/data/make_synthetic_cad.py --out data/synthetic_cad [--train 64] [--val 8] [--format npy|ply]
                                           [--kinds box cylinder ...] [--no-llm]

Writes ``OUT/{train,val}/points/<i>.npy|.ply`` (surface samples of random parametric solids: boxes, cylinders,
boxes with a hole, plates with two holes, tubes, L-shaped extrusions; computed analytically, so CadQuery is not
needed), ``OUT/{train,val}/code/<i>.py`` (their CadQuery programs, result in ``r``, integer coordinates in
[-100, 100] as CAD-Recode v1.5), ``OUT/{train,val}.json`` (annotation files), ``OUT/tokenizer/`` (a byte-level BPE
with Qwen2's special tokens, trained on the training programs) and, unless ``--no-llm``, ``OUT/tiny_qwen2/``: the
seeded tiny Qwen2 of the config saved in the HF layout with that tokenizer, standing in for a downloaded base so the
frozen LLM is rebuilt through the real ``from_pretrained`` path. Deterministic for a given ``--seed``.
"""
import argparse
import sys
from pathlib import Path
from typing import List, Optional

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from mmengine.config import Config  # noqa: E402

from opentad_lora.datasets.cad import SHAPE_MAKERS, CADCodeTokenizer, write_synthetic_dataset  # noqa: E402

DEFAULT_CONFIG = REPO_ROOT / 'configs' / 'cad_recode' / 'cad_recode_tiny_lora_synthetic.py'
LLM_DIR = 'tiny_qwen2'


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Write synthetic CAD programs + point clouds and a tiny HF LLM')
    parser.add_argument('--out', default='data/synthetic_cad', help='output folder')
    parser.add_argument('--train', type=int, default=64, help='training samples')
    parser.add_argument('--val', type=int, default=8, help='validation samples')
    parser.add_argument('--surface-points', type=int, default=8192, help='surface samples per solid (CAD-Recode)')
    parser.add_argument('--format', choices=['npy', 'ply'], default='npy', help='point cloud file format')
    parser.add_argument('--kinds', nargs='+', choices=sorted(SHAPE_MAKERS), default=sorted(SHAPE_MAKERS))
    parser.add_argument('--vocab-size', type=int, default=512, help='BPE vocabulary of the tiny tokenizer')
    parser.add_argument('--config', default=str(DEFAULT_CONFIG), help='config whose llm_config is initialised')
    parser.add_argument('--no-llm', action='store_true', help='do not write the tiny LLM (no transformers needed '
                        'beyond the tokenizer)')
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args(argv)


def write_tiny_llm(llm_config: dict, tokenizer_dir: Path, out_dir: Path, seed: int) -> Path:
    """Save the seeded LLM of ``llm_config`` (vocabulary = the tokenizer's) with the tokenizer, in the HF layout."""
    from opentad_lora.models.cad.llm import build_causal_lm, quiet_transformers

    tokenizer = CADCodeTokenizer(tokenizer_dir)
    llm = build_causal_lm(config=llm_config, seed=seed, vocab_size=len(tokenizer))
    with quiet_transformers():
        llm.save_pretrained(str(out_dir))
    tokenizer.tokenizer.save_pretrained(str(out_dir))
    return out_dir


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    write_synthetic_dataset(out, dict(train=args.train, val=args.val), args.seed, args.surface_points, args.format,
                            args.kinds, args.vocab_size)
    print(f'Wrote {args.train} train and {args.val} val solids ({", ".join(args.kinds)}) to {out}, '
          f'annotation files {out}/train.json and {out}/val.json, tokenizer {out}/tokenizer.')
    if not args.no_llm:
        llm_config = Config.fromfile(args.config).llm_config.to_dict()
        path = write_tiny_llm(llm_config, out / 'tokenizer', out / LLM_DIR, args.seed)
        print(f'Wrote the seeded tiny LLM ({llm_config["model_type"]}, hidden {llm_config["hidden_size"]}) to {path}.')


if __name__ == '__main__':
    main()
