"""First-iteration (compile) time of compiled LoRA training: the whole loss forward vs regional compilation.

Synthetic model (default): our ``VisionTransformer`` with LoRA on ``qkv``/``proj``/``fc1``/``fc2`` and a linear
head, cross-entropy, AdamW; the loss forward is compiled by ``CompileHook`` exactly as ``tools/train.py`` sets it
up (``--compile whole``: ``compile=True``; ``regional``: ``compile=dict(regional=True)``; ``none``: eager)::

    OMP_NUM_THREADS=1 python benchmarks/compile_time.py --compile regional [--depth 6 --dim 64] [--device cuda]

A config: ``tools/train.py CONFIG --compile`` in this process (``--no-validate``, every iteration logged
unsmoothed), the times read from the run's ``scalars.json``; arguments after ``--`` go to ``tools/train.py``::

    python benchmarks/compile_time.py --config CONFIG --compile regional --patterns 'backbone.blocks.*' -- \\
        --amp --cfg-options train_cfg.max_epochs=1

Prints one JSON line: the first iteration's wall seconds (and, synthetic model, the CPU seconds of this process
and of the C++ compilers it started, which a loaded machine does not inflate), the median of the later ones,
dynamo's compiled graphs and graph breaks. Inductor's cache is a fresh folder (a cold compile) unless
``--warm-cache``; run each variant in its own process (dynamo's cache lives in the process).
"""
import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import opentad_lora  # noqa: E402,F401  (before mmengine, which imports bitsandbytes)

import torch  # noqa: E402
import torch._inductor.config  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch._dynamo.utils import counters  # noqa: E402

from opentad_lora.engine import CompileHook  # noqa: E402
from opentad_lora.models.backbones.vit import VisionTransformer  # noqa: E402
from opentad_lora.peft import apply_lora  # noqa: E402


class ViTClassifier(nn.Module):
    """ViT + linear head with an MMEngine-style ``forward(inputs, labels, mode)``."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__()
        self.backbone = VisionTransformer(img_size=args.img_size, patch_size=args.patch_size, embed_dim=args.dim,
                                          depth=args.depth, num_heads=args.heads, with_cp=args.with_cp)
        self.head = nn.Linear(args.dim, 10)
        apply_lora(self, dict(r=8, alpha=16, dropout=args.lora_dropout, targets=['qkv', 'proj', 'fc1', 'fc2'],
                              quantize_bits=args.quantize_bits, modules_to_save=['head']))

    def forward(self, inputs: torch.Tensor, labels: Optional[torch.Tensor] = None, mode: str = 'tensor') -> Any:
        logits = self.head(self.backbone(inputs))
        return dict(loss=F.cross_entropy(logits, labels)) if mode == 'loss' else logits


def _cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its finished children (the C++ compiler)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _compile_options(args: argparse.Namespace) -> Dict[str, Any]:
    options: Dict[str, Any] = dict(backend=args.backend)
    if args.compile_mode:
        options['mode'] = args.compile_mode
    if args.compile == 'regional':
        options['regional'] = args.patterns or True
    return options


def _graph_stats() -> Dict[str, int]:
    return dict(graphs=counters['stats']['unique_graphs'], graph_breaks=sum(counters['graph_break'].values()))


def run_synthetic(args: argparse.Namespace) -> Dict[str, Any]:
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = ViTClassifier(args).to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    hook = CompileHook(**_compile_options(args)) if args.compile != 'none' else None
    runner = SimpleNamespace(model=model)
    if hook is not None:
        hook.before_train(runner)
    inputs = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device)
    labels = torch.randint(0, 10, (args.batch, ), device=device)
    walls: List[float] = []
    cpu_first = 0.0
    for step in range(args.steps):
        start_wall, start_cpu = time.perf_counter(), _cpu_seconds()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
            loss = model(inputs, labels, mode='loss')['loss']
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == 'cuda':
            torch.cuda.synchronize()
        walls.append(time.perf_counter() - start_wall)
        if step == 0:
            cpu_first = _cpu_seconds() - start_cpu
        if hook is not None:
            hook.after_train_iter(runner, step)
    if hook is not None:
        hook.after_train(runner)
    return dict(first_wall_s=round(walls[0], 3), first_cpu_s=round(cpu_first, 3),
                later_median_s=round(statistics.median(walls[1:]), 5) if len(walls) > 1 else None)


def run_config(args: argparse.Namespace, train_args: List[str]) -> Dict[str, Any]:
    sys.path.insert(0, str(REPO_ROOT / 'tools'))
    import train  # tools/train.py

    work_dir = Path(tempfile.mkdtemp(prefix='compile_time_'))
    argv = [args.config, '--work-dir', str(work_dir), '--no-validate', *train_args, '--cfg-options',
            'default_hooks.logger.interval=1', 'log_processor.window_size=1']
    if args.compile != 'none':
        argv += [f'compile.{key}=' + (f'[{",".join(value)}]' if isinstance(value, list) else str(value))
                 for key, value in _compile_options(args).items()]
        argv.insert(1, '--compile')
    train.main(argv)
    rows = [json.loads(line) for path in sorted(work_dir.glob('*/vis_data/scalars.json'))
            for line in path.read_text().splitlines() if line.strip()]
    times = [row['time'] for row in rows if 'time' in row]
    return dict(first_wall_s=round(times[0], 3), later_median_s=round(statistics.median(times[1:]), 5)
                if len(times) > 1 else None, iterations=len(times), work_dir=str(work_dir))


def main(argv: Optional[List[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    train_args = argv[argv.index('--') + 1:] if '--' in argv else []
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--compile', choices=['whole', 'regional', 'none'], default='regional')
    parser.add_argument('--backend', default='inductor')
    parser.add_argument('--compile-mode', default=None, help="torch.compile mode, e.g. 'reduce-overhead'")
    parser.add_argument('--patterns', nargs='+', help="regional: these module names (e.g. 'backbone.blocks.*')")
    parser.add_argument('--config', help='time tools/train.py on this config instead of the synthetic model')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--depth', type=int, default=6)
    parser.add_argument('--dim', type=int, default=64)
    parser.add_argument('--heads', type=int, default=4)
    parser.add_argument('--img-size', type=int, default=32)
    parser.add_argument('--patch-size', type=int, default=8)
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--steps', type=int, default=4)
    parser.add_argument('--with-cp', action='store_true', help='activation checkpointing of each block')
    parser.add_argument('--quantize-bits', type=int, default=None, help='QLoRA base: 4 or 8')
    parser.add_argument('--lora-dropout', type=float, default=0.0)
    parser.add_argument('--amp', action='store_true', help='bf16 autocast (synthetic model)')
    parser.add_argument('--warm-cache', action='store_true', help="keep inductor's usual cache folder")
    args = parser.parse_args(argv[:argv.index('--')] if '--' in argv else argv)
    if not args.warm_cache:
        os.environ['TORCHINDUCTOR_CACHE_DIR'] = tempfile.mkdtemp(prefix='inductor_cold_')
    if args.device == 'cpu' and not args.config:
        torch._inductor.config.compile_threads = 1  # no pool of compile workers: CPU time stays in this process
    result = run_config(args, train_args) if args.config else run_synthetic(args)
    synthetic = ('device', 'depth', 'dim', 'heads', 'img_size', 'patch_size', 'batch', 'steps', 'with_cp',
                 'quantize_bits', 'lora_dropout', 'amp')
    settings = {key: value for key, value in vars(args).items()
                if value not in (None, False) and not (args.config and key in synthetic)}
    if train_args:
        settings['train_args'] = ' '.join(train_args)
    print(json.dumps(dict(**settings, **result, **_graph_stats(), torch=torch.__version__)))


if __name__ == '__main__':
    main()
