"""Write a synthetic CAD-Recode dataset and a stand-in pretrained tiny LLM.

    python tools/data/make_synthetic_cad.py --out data/synthetic_cad [--train 64] [--val 8] [--format npy|ply]
                                           [--kinds box cylinder ...] [--no-llm]

Writes ``OUT/{train,val}/points/<i>.npy|.ply`` (surface samples of random parametric solids: boxes, cylinders,
boxes with a hole, plates with two holes, tubes, L-shaped extrusions; computed analytically, so CadQuery is not
needed), ``OUT/{train,val}/code/<i>.py`` (their CadQuery programs, result in ``r``, integer coordinates in
[-100, 100] as CAD-Recode v1.5), ``OUT/{train,val}.json`` (annotation files), ``OUT/tokenizer/`` (a byte-level BPE
with Qwen2's special tokens, trained on the training programs) and, unless ``--no-llm``, ``OUT/<name>/``: the
seeded tiny LLM of ``--config``'s ``llm_config`` (``name`` = the last part of its ``llm_path``: ``tiny_qwen2`` by
default, ``tiny_qwen3`` for the Qwen3 config) saved in the HF layout with that tokenizer, standing in for a
downloaded base so the frozen LLM is rebuilt through the real ``from_pretrained`` path. Deterministic for a given
``--seed``. The requirements (the ``llm`` extra, the config and its model type) are checked before anything is
written.
"""
import argparse
import importlib
import sys
from pathlib import Path
from typing import List, Optional

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from mmengine.config import Config  # noqa: E402

from opentad_lora.datasets.cad import SHAPE_MAKERS, CADCodeTokenizer, write_synthetic_dataset  # noqa: E402

DEFAULT_CONFIG = REPO_ROOT / 'configs' / 'cad_recode' / 'cad_recode_tiny_lora_synthetic.py'
INSTALL_HINT = ('install the `llm` extra: EXTRAS=all bash tools/setup_env.sh, or pip install -e ".[llm]" (README, '
                '"Installing by hand")')


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
    parser.add_argument('--no-llm', action='store_true', help='do not write the tiny LLM (the tokenizer is written '
                        'either way)')
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


def check_requirements(llm_config: Optional[dict]) -> None:
    """Stop with one message, before anything is written, when the tokenizer or the tiny LLM could not be made."""
    for module in ('tokenizers', 'transformers'):
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise SystemExit(f'make_synthetic_cad.py needs {module} ({err}); {INSTALL_HINT}. Nothing was written.')
    if llm_config is not None:
        import transformers

        try:
            transformers.AutoConfig.for_model(llm_config['model_type'])
        except (KeyError, ValueError) as err:
            raise SystemExit(f'transformers {transformers.__version__} cannot build the LLM of the config '
                             f'(model_type {llm_config.get("model_type")!r}: {err}); upgrade transformers '
                             '(requirements/llm.txt). Nothing was written.')


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    llm_config = llm_dir = None
    if not args.no_llm:
        cfg = Config.fromfile(args.config)
        llm_config, llm_dir = cfg.llm_config.to_dict(), Path(cfg.llm_path).name
    check_requirements(llm_config)
    write_synthetic_dataset(out, dict(train=args.train, val=args.val), args.seed, args.surface_points, args.format,
                            args.kinds, args.vocab_size)
    print(f'Wrote {args.train} train and {args.val} val solids ({", ".join(args.kinds)}) to {out}, '
          f'annotation files {out}/train.json and {out}/val.json, tokenizer {out}/tokenizer.')
    if llm_config is not None:
        path = write_tiny_llm(llm_config, out / 'tokenizer', out / llm_dir, args.seed)
        print(f'Wrote the seeded tiny LLM ({llm_config["model_type"]}, hidden {llm_config["hidden_size"]}) to {path}.')


if __name__ == '__main__':
    main()
