"""Where the time of one training step goes: GPU kernel time per kernel, for each mode of ``lora_step.py``.

Runs ``--warmup`` steps, then profiles ``--iters`` steps with ``torch.profiler`` and prints one JSON line per mode
with the total GPU time per step and the kernels that take the most of it (name, calls per step, ms per step).
The difference between a mode's table and the floor's is the cost of LoRA, kernel by kernel. The same line gives
the host's side: kernel launches per step, and the time to issue a step against the time to finish it (equal when
the host, not the GPU, sets the pace).

    python benchmarks/profile_step.py --arch vit_h --batch 64 --modes floor,ours_lora
"""
import argparse
import copy
import gc
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lora_step import ARCHS, build, prepare  # noqa: E402
from routing import routed  # noqa: E402
from step_timer import make_step, time_steps  # noqa: E402

# CUDA runtime/driver calls that launch one kernel each (cuBLAS, ATen, Triton)
LAUNCH_CALLS = {'cudaLaunchKernel', 'cudaLaunchKernelExC', 'cuLaunchKernel', 'cuLaunchKernelEx'}


def kernel_table(model: torch.nn.Module, x: torch.Tensor, iters: int, top: int) -> dict:
    """GPU time per step, split by kernel name (the ``top`` largest, plus the rest summed)."""
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:  # CPU: the launch calls
        time_steps(model, x, iters, 0)
    per_kernel = defaultdict(lambda: [0, 0.0])
    launches = 0
    for event in prof.events():
        launches += event.name in LAUNCH_CALLS
        # a record_function range (``Optimizer.step#AdamW.step``) also shows on the GPU timeline: not a kernel
        if event.device_type == torch.autograd.DeviceType.CUDA and not getattr(event, 'is_user_annotation', False):
            entry = per_kernel[event.name[:90]]
            entry[0] += 1
            entry[1] += event.device_time_total / 1e3
    rows = sorted(per_kernel.items(), key=lambda item: -item[1][1])
    total = sum(ms for _, (_, ms) in rows) / iters
    kernels = [dict(kernel=name, calls=count // iters, ms=round(ms / iters, 3)) for name, (count, ms) in rows[:top]]
    rest = sum(ms for _, (_, ms) in rows[top:]) / iters
    return dict(gpu_ms=round(total, 2), launches=launches // iters, kernels=kernels, rest_ms=round(rest, 3))


def issue_ms(model: torch.nn.Module, x: torch.Tensor, iters: int) -> dict:
    """Median host time to issue one step (until the step's Python returns) and to finish it (GPU synchronised).

    A step whose issue time equals its total time is bound by the host launching kernels, not by the GPU.
    """
    step = make_step(model, x)
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    issue, total = [], []
    for _ in range(iters):
        sync()
        start = time.perf_counter()
        step()
        issued = time.perf_counter()
        sync()
        issue.append(issued - start)
        total.append(time.perf_counter() - start)
    return dict(issue_ms=round(statistics.median(issue) * 1e3, 2), step_ms=round(statistics.median(total) * 1e3, 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--arch', default='vit_h', choices=sorted(ARCHS))
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--rank', type=int, default=16)
    parser.add_argument('--iters', type=int, default=3)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--top', type=int, default=25)
    parser.add_argument('--modes', default='floor,ours_lora')
    parser.add_argument('--model', default='timm', choices=('timm', 'ours'), help="whose ViT (lora_step.build)")
    parser.add_argument('--cpu-smoke', action='store_true', help='tiny model, 1 profiled step per mode, on CPU')
    args = parser.parse_args()
    device = 'cpu' if args.cpu_smoke else 'cuda'
    if args.cpu_smoke:  # checks the script only: no kernels or launches to count on CPU
        args.arch, args.batch, args.iters, args.warmup = 'tiny', 2, 1, 1
    size = ARCHS[args.arch]['img_size']
    height, width = size if isinstance(size, tuple) else (size, size)
    torch.manual_seed(0)
    reference = build(args.arch, args.model)
    for mode in args.modes.split(','):
        torch.manual_seed(0)
        x = torch.randn(args.batch, 3, height, width, device=device, requires_grad=mode.startswith('floor'))
        with routed(mode) as built:
            model = prepare(built, copy.deepcopy(reference), args.rank, device)
            time_steps(model, x, 1, args.warmup)
            row = dict(**issue_ms(model, x, 5), **kernel_table(model, x, args.iters, args.top))
        print(json.dumps(dict(mode=mode, arch=args.arch, model=args.model, batch=args.batch, **row)), flush=True)
        del model
        if device == 'cuda':
            gc.collect()  # a graphed model is a reference cycle: free its graphs before the next mode
            torch.cuda.empty_cache()


if __name__ == '__main__':
    main()
