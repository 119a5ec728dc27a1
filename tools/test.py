"""Evaluate a checkpoint on the test set of a config and print the metrics (mmpretrain's ``tools/test.py``).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out results.json|results.pkl] [--out-item
                         {metrics,pred}] [--show-dir DIR] [--cfg-options KEY=VALUE ...] [--launcher ...]

The checkpoint may be a trimmed LoRA checkpoint: the frozen base is rebuilt by the model from its pretrained file.
It may also be a detector checkpoint trained by OpenTAD (``epoch_X.pth``; its EMA weights when it has them).
A checkpoint that does not fit the config's model (tensors missing, unexpected or of another shape) stops the tool
with one error naming the file, the config and the tensors, before anything is evaluated.
"""
import argparse
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import opentad_lora  # noqa: E402,F401  (before mmengine, which imports bitsandbytes: see its __init__)

import mmengine  # noqa: E402
from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.evaluator import DumpResults  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

from opentad_lora.engine.checkpoint import CheckpointError  # noqa: E402
from opentad_lora.engine.dist_teardown import release_process_group  # noqa: E402
from opentad_lora.engine.runner_utils import add_checkpoint_match_hook, setup_launcher  # noqa: E402
from opentad_lora.models.tad.opentad_checkpoint import OpenTADCheckpointHook  # noqa: E402
from opentad_lora.registry import RUNNERS, register_all_modules  # noqa: E402

register_all_modules()


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test (and eval) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save logs (default: work_dirs/<config name>)')
    parser.add_argument('--out', help='dump the metrics (.json/.yaml/.pkl) or, with --out-item pred, the '
                        'predictions (.pkl)')
    parser.add_argument('--out-item', choices=['metrics', 'pred'], default='metrics',
                        help='what --out holds (default: metrics)')
    parser.add_argument('--show-dir', help='save visualisations here (needs a `visualization` hook in the config)')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config entries, xxx=yyy (applied last); lists as key="[a,b]", nested as a.b.c=v')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher (default: pytorch under torchrun, else none)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=None,
                        help='set by the old torch.distributed.launch (copied to LOCAL_RANK)')
    args = parser.parse_args(argv)
    if args.local_rank is not None:
        os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    if args.out_item == 'pred' and args.out and not args.out.endswith(('.pkl', '.pickle')):
        parser.error('--out-item pred writes a pickle: give --out a .pkl path.')
    return args


def merge_args(cfg: Config, args: argparse.Namespace) -> Config:
    """Apply the command line to ``cfg`` (``--cfg-options`` last)."""
    setup_launcher(cfg, args.launcher)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = str(Path('work_dirs') / Path(args.config).stem)
    cfg.load_from = args.checkpoint
    cfg.resume = False
    if args.show_dir:
        hook = cfg.get('default_hooks', {}).get('visualization')
        if hook is None:
            raise SystemExit(f'--show-dir needs a `visualization` hook in default_hooks of {args.config}.')
        hook.enable = True
        hook.out_dir = args.show_dir
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    add_checkpoint_match_hook(cfg, check_load_from=True)
    return cfg


def format_metrics(metrics: Dict[str, float]) -> str:
    """One ``name: value`` line per metric."""
    return '\n'.join(f'{name}: {value:.4f}' if isinstance(value, float) else f'{name}: {value}'
                     for name, value in metrics.items())


def main(argv: Optional[List[str]] = None) -> Dict[str, float]:
    args = parse_args(argv)
    cfg = merge_args(Config.fromfile(args.config), args)
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    runner.register_hook(OpenTADCheckpointHook())  # OpenTAD's epoch_X.pth (EMA weights first) loads as-is
    if args.out and args.out_item == 'pred':
        runner.test_evaluator.metrics.append(DumpResults(out_file_path=args.out))
    try:
        metrics = runner.test()
    except CheckpointError as err:  # a wrong, corrupt or unsafe checkpoint: one line, exit status 1
        raise SystemExit(f'{type(err).__name__}: {err}') from None
    if runner.rank == 0:
        print(format_metrics(metrics))
        if args.out and args.out_item == 'metrics':
            mmengine.dump(metrics, args.out)
    release_process_group()
    return metrics


if __name__ == '__main__':
    main()
