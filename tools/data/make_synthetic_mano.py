"""Write a synthetic hand model in the MANO file layout (``MANO_RIGHT.pkl``'s keys and shapes).

    python tools/data/make_synthetic_mano.py data/synthetic_hands/MANO_RIGHT.pkl [--seed 0]

The real MANO model is licence-restricted (mano.is.tue.mpg.de) and never shipped; this stand-in has the same
layout (778 vertices, 1538 faces, 16 joints, 10 shape / 135 pose blend shapes, 45-d PCA basis and mean, fingertips
at MANO's vertex ids), so every MANO code path runs on it. Deterministic for a given ``--seed``.
"""
import argparse
import sys
from pathlib import Path
from typing import List, Optional

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from opentad_lora.datasets.hamer.synthetic_mano import write_synthetic_mano  # noqa: E402


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description='Write a synthetic MANO-format hand model (.pkl)')
    parser.add_argument('out', help='output .pkl path')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    path = write_synthetic_mano(args.out, args.seed)
    print(f'Wrote synthetic MANO-format model {path}')


if __name__ == '__main__':
    main()
