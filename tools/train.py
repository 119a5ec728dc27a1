"""Train a model described by a config file (mmpretrain's ``tools/train.py`` contract).

    python tools/train.py CONFIG [--work-dir DIR] [--resume [PATH]] [--amp] [--compile | --cuda-graph]
                          [--auto-scale-lr] [--no-validate]
                          [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]
    torchrun --nproc-per-node N tools/train.py CONFIG      # one DDP job of N processes (gloo on CPU)

``--resume`` alone resumes from ``WORK_DIR/last_checkpoint``; ``--resume PATH`` from that checkpoint; one that does
not fit the config (other tensors, shapes or optimizer groups) stops with one error before any training step. Runs
from the repository root without installing the package.
"""
import argparse
import os
import sys
from pathlib import Path
from typing import List, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import opentad_lora  # noqa: E402,F401  (before mmengine, which imports bitsandbytes: see its __init__)

import torch  # noqa: E402
from mmengine.config import Config, ConfigDict, DictAction  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

from opentad_lora.engine.checkpoint import CheckpointError  # noqa: E402
from opentad_lora.engine.dist_teardown import release_process_group  # noqa: E402
from opentad_lora.engine.runner_utils import (add_checkpoint_match_hook, setup_amp, setup_compile,  # noqa: E402
                                              setup_cuda_graph, setup_launcher)
from opentad_lora.registry import RUNNERS, register_all_modules  # noqa: E402

register_all_modules()


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models (default: work_dirs/<config name>)')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from this checkpoint; without a value, from the latest checkpoint of the work dir')
    parser.add_argument('--amp', action='store_true', help='mixed precision (bf16 on GPU; fp32 with a note on CPU)')
    parser.add_argument('--compile', action='store_true',
                        help='torch.compile the model\'s loss forward (as compile=True in the config; see '
                             'docs/engine.md): faster steps after a first step that compiles')
    parser.add_argument('--cuda-graph', action='store_true',
                        help='replay the backbone\'s eager forward and backward as CUDA graphs (as cuda_graph=True in '
                             'the config; see docs/engine.md): no host cost per kernel, for fixed input shapes')
    parser.add_argument('--no-validate', action='store_true', help='do not evaluate during training')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the lr by the real batch size over auto_scale_lr.base_batch_size')
    parser.add_argument('--no-pin-memory', action='store_true', help='no pin_memory in the dataloaders')
    parser.add_argument('--no-persistent-workers', action='store_true',
                        help='no persistent_workers in the dataloaders')
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
    return args


def set_dataloader_defaults(cfg: Config, args: argparse.Namespace) -> None:
    """pin_memory on GPU machines and persistent workers when there are workers, unless the config says."""
    for field in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg.get(field)
        if loader is None:
            continue
        loader.setdefault('pin_memory', torch.cuda.is_available() and not args.no_pin_memory)
        loader.setdefault('persistent_workers', loader.get('num_workers', 0) > 0 and not args.no_persistent_workers)
        if args.no_pin_memory:
            loader.pin_memory = False
        if args.no_persistent_workers:
            loader.persistent_workers = False


def merge_args(cfg: Config, args: argparse.Namespace) -> Config:
    """Apply the command line to ``cfg`` (``--cfg-options`` last, so it can override everything)."""
    setup_launcher(cfg, args.launcher)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = str(Path('work_dirs') / Path(args.config).stem)
    if args.no_validate:
        cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    if args.amp:
        setup_amp(cfg)
    if args.auto_scale_lr:
        cfg.setdefault('auto_scale_lr', ConfigDict())
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    set_dataloader_defaults(cfg, args)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    add_checkpoint_match_hook(cfg, check_load_from=False)
    setup_compile(cfg, args.compile)
    setup_cuda_graph(cfg, args.cuda_graph)
    return cfg


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    cfg = merge_args(Config.fromfile(args.config), args)
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    try:
        runner.train()
    except CheckpointError as err:  # --resume with a wrong, corrupt or unsafe checkpoint: one line, exit status 1
        raise SystemExit(f'{type(err).__name__}: {err}') from None
    release_process_group()


if __name__ == '__main__':
    main()
