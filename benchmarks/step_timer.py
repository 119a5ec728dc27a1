"""The timed step every benchmark in this folder measures: median seconds and peak GPU memory of repeated steps.

A training step is forward under bf16 autocast + ``backward`` of a mean-square loss + AdamW on the trainable
parameters (none for the frozen floor, whose input requires grad instead); an inference step is the forward under
``torch.no_grad``. The device is synchronised around every step, and the first ``warmup`` steps are not counted.
"""
import statistics
import time
from typing import Callable, Optional, Tuple

import torch
from torch import nn


def step_loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The loss every training step here backpropagates: mean square of the bf16-autocast output."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        out = model(x)
    return out.float().square().mean()


def make_step(model: nn.Module, x: torch.Tensor, train: bool = True) -> Callable[[], None]:
    """One step of ``model`` on ``x`` as a closure, with its own AdamW over the trainable parameters (no sync)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4) if params and train else None

    def step() -> None:
        if not train:
            with torch.autocast(x.device.type, dtype=torch.bfloat16), torch.no_grad():
                model(x)
            return
        step_loss(model, x).backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return step


def time_steps(model: nn.Module, x: torch.Tensor, iters: int, warmup: int,
               train: bool = True) -> Tuple[float, Optional[float]]:
    """``(median seconds per step, peak GiB since the first step or None on CPU)``."""
    cuda = x.is_cuda
    step = make_step(model, x, train)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for index in range(warmup + iters):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        if index >= warmup:
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return statistics.median(times), peak
