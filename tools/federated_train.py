"""Federated LoRA fine-tuning: N clients x R rounds with Flower's simulation engine (Ray backend).

    python tools/federated_train.py CONFIG [--work-dir DIR] [--cfg-options federated.strategy=ffa ...]

The config has the usual ``model`` and ``optim_wrapper`` (a client's local optimiser), plus ``train_dataset`` (split
across clients), ``test_dataset`` (the server's global evaluation) and ``federated`` (strategy ``fedavg`` | ``ffa`` |
``exact``, ``residual``, ``num_clients``, ``num_rounds``, ``local_epochs``, ``batch_size``, ``partition``...; see
``configs/clip/federated_tiny_synthetic.py``). Prints one line per round and writes ``history.json``,
``accuracy.png`` and ``adapters/round_XXX/`` (PEFT adapter files of the global model) under the work dir.
Needs ``pip install "flwr[simulation]"``.
"""
import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from mmengine.config import Config, DictAction  # noqa: E402

from opentad_lora.registry import register_all_modules  # noqa: E402

register_all_modules()


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Federated LoRA fine-tuning with Flower (simulation)')
    parser.add_argument('config', help='config file with model, optim_wrapper, train/test_dataset and federated')
    parser.add_argument('--work-dir', help='output folder (default: work_dirs/<config name>)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, xxx=yyy (e.g. federated.strategy=exact)')
    return parser.parse_args(argv)


def format_row(row: Dict) -> str:
    """One log line per round."""
    train = '' if row['train_loss'] is None else f"  train loss {row['train_loss']:.4f}"
    return (f"round {row['round']:3d}  top-1 {row['top1']:6.2f}%  top-5 {row['top5']:6.2f}%  loss {row['loss']:.4f}"
            f"{train}  up {row['up_bytes']:,} B  down {row['down_bytes']:,} B  total {row['cum_bytes']:,} B  "
            f"clients {row['accepted']} (rejected {row['rejected']}, empty {row['empty']})")


def main(argv: Optional[List[str]] = None) -> List[Dict]:
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    required = ('model', 'optim_wrapper', 'train_dataset', 'test_dataset', 'federated')
    missing = [key for key in required if key not in cfg]
    if missing:
        raise SystemExit(f'{args.config} lacks {missing} (see configs/clip/federated_tiny_synthetic.py).')
    work_dir = args.work_dir or cfg.get('work_dir') or str(Path('work_dirs') / Path(args.config).stem)
    from opentad_lora.federated.simulation import run_federated
    rows = run_federated(cfg.to_dict(), work_dir)
    for row in rows:
        print(format_row(row))
    print(f'Wrote {work_dir}/history.json, {work_dir}/accuracy.png and {work_dir}/adapters/round_XXX/.')
    return rows


if __name__ == '__main__':
    main()
