"""Where the time of one training step goes: GPU kernel time per kernel, for each mode of ``lora_step.py``.

Runs ``--warmup`` steps, then profiles ``--iters`` steps with ``torch.profiler`` and prints one JSON line per mode
with the total GPU time per step and the kernels that take the most of it (name, calls per step, ms per step).
The difference between a mode's table and the floor's is the cost of LoRA, kernel by kernel.

    python benchmarks/profile_step.py --arch vit_h --batch 64 --modes floor,ours_lora
"""
import argparse
import copy
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lora_step import ARCHS, build, prepare  # noqa: E402
from step_timer import time_steps  # noqa: E402


def kernel_table(model: torch.nn.Module, x: torch.Tensor, iters: int, top: int) -> dict:
    """GPU time per step, split by kernel name (the ``top`` largest, plus the rest summed)."""
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        time_steps(model, x, iters, 0)
    per_kernel = defaultdict(lambda: [0, 0.0])
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            entry = per_kernel[event.name[:90]]
            entry[0] += 1
            entry[1] += event.device_time_total / 1e3
    rows = sorted(per_kernel.items(), key=lambda item: -item[1][1])
    total = sum(ms for _, (_, ms) in rows) / iters
    kernels = [dict(kernel=name, calls=count // iters, ms=round(ms / iters, 3)) for name, (count, ms) in rows[:top]]
    rest = sum(ms for _, (_, ms) in rows[top:]) / iters
    return dict(gpu_ms=round(total, 2), kernels=kernels, rest_ms=round(rest, 3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--arch', default='vit_h', choices=sorted(ARCHS))
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--rank', type=int, default=16)
    parser.add_argument('--iters', type=int, default=3)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--top', type=int, default=25)
    parser.add_argument('--modes', default='floor,ours_lora')
    args = parser.parse_args()
    size = ARCHS[args.arch]['img_size']
    height, width = size if isinstance(size, tuple) else (size, size)
    torch.manual_seed(0)
    reference = build(args.arch)
    for mode in args.modes.split(','):
        torch.manual_seed(0)
        model = prepare(mode, copy.deepcopy(reference), args.rank, 'cuda')
        x = torch.randn(args.batch, 3, height, width, device='cuda', requires_grad=mode == 'floor')
        time_steps(model, x, 1, args.warmup)
        print(json.dumps(dict(mode=mode, arch=args.arch, batch=args.batch, **kernel_table(model, x, args.iters,
                                                                                           args.top))), flush=True)
        del model
        torch.cuda.empty_cache()


if __name__ == '__main__':
    main()
