"""Federated LoRA fine-tuning: N clients x R rounds of our Flower App, with Flower's simulation engine (Ray, one
machine) or, with ``--superlink``, its deployment engine (a running SuperLink and its SuperNodes).

    python tools/federated_train.py CONFIG [--work-dir DIR] [--cfg-options federated.strategy=ffa ...] [--resume]
    python tools/federated_train.py CONFIG --superlink CONNECTION [--work-dir DIR] [--resume]

The config has the usual ``model`` and ``optim_wrapper`` (a client's local optimiser), plus ``train_dataset`` (split
across clients), ``test_dataset`` (the server's global evaluation) and ``federated`` (strategy ``fedavg`` | ``ffa`` |
``exact``, ``residual``, ``num_clients``, ``num_rounds``, ``local_epochs``, ``batch_size``, ``partition``...; see
``configs/clip/federated_tiny_synthetic.py``). Prints one line per round and writes ``history.json``,
``accuracy.png`` and ``adapters/round_XXX/`` (PEFT adapter files of the global model, saved every round) under the
work dir; ``--resume`` continues from the last round saved there. With ``--superlink`` the server writes them on the
SuperLink's machine (the work dir is made absolute here); ``CONNECTION`` is a SuperLink connection of Flower's
``config.toml`` (docs/clip.md, "Deployment"). Needs ``pip install "flwr[simulation]"``.
"""
import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from mmengine.config import Config, DictAction  # noqa: E402


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Federated LoRA fine-tuning with Flower (simulation or deployment)')
    parser.add_argument('config', help='config file with model, optim_wrapper, train/test_dataset and federated')
    parser.add_argument('--work-dir', help='output folder (default: work_dirs/<config name>)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, xxx=yyy (e.g. federated.strategy=exact)')
    parser.add_argument('--resume', action='store_true', help='continue from the last round saved in the work dir')
    parser.add_argument('--superlink', metavar='CONNECTION',
                        help="submit the run to this SuperLink connection of Flower's config.toml (`flwr run`) "
                             'instead of simulating it')
    return parser.parse_args(argv)


def format_row(row: Dict) -> str:
    """One log line per round."""
    train = '' if row['train_loss'] is None else f"  train loss {row['train_loss']:.4f}"
    return (f"round {row['round']:3d}  top-1 {row['top1']:6.2f}%  top-5 {row['top5']:6.2f}%  loss {row['loss']:.4f}"
            f"{train}  up {row['up_bytes']:,} B  down {row['down_bytes']:,} B  total {row['cum_bytes']:,} B  "
            f"clients {row['accepted']} (rejected {row['rejected']}, empty {row['empty']}, failed "
            f"{row.get('failures', 0)})")


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
    if args.superlink:
        from opentad_lora.federated.app import RunSpec
        from opentad_lora.federated.deploy import submit
        from opentad_lora.federated.task import FederatedTask
        FederatedTask(cfg.to_dict())  # a bad federated section stops here, before anything is submitted
        work_dir = str(Path(work_dir).resolve())
        started = time.time()
        try:
            submit(RunSpec(cfg.to_dict(), work_dir, args.resume), args.superlink)
        except (RuntimeError, FileNotFoundError) as err:  # the run did not start or did not complete
            raise SystemExit(f'federated_train: {err}') from None
        history = Path(work_dir) / 'history.json'
        if not history.is_file() or history.stat().st_mtime < started:  # the SuperLink runs on another machine
            print(f'Run finished; the server wrote its outputs to {work_dir} on the SuperLink machine.')
            return []
        rows = json.loads(history.read_text())
    else:
        from opentad_lora.federated.simulation import run_federated
        from opentad_lora.registry import register_all_modules
        register_all_modules()
        rows = run_federated(cfg.to_dict(), work_dir, resume=args.resume)
    for row in rows:
        print(format_row(row))
    print(f'Wrote {work_dir}/history.json, {work_dir}/accuracy.png and {work_dir}/adapters/round_XXX/.')
    return rows


if __name__ == '__main__':
    main()
