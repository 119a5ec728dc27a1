"""Activation checkpointing that stores the block input in bf16 or fp8: the memory-saving mode for long inputs.

With one checkpoint per block, what stays in memory through the step is every block's input: for AdaTAD's
768-frame windows that is most of the peak (the residual stream is float32, promoted by the adapters' float32 gain).
Here the input is stored compressed instead — ``'bf16'`` (2 bytes) or ``'fp8'`` (float8 e4m3 with one float32
scale per token, ~1 byte) — while forward runs on the exact input, so predictions and the loss are exact.
Backward recomputes the block from the decompressed input, so gradients are those at an input rounded to bf16 or
fp8: a small approximation (measured on the AdaTAD quickstart, docs/adatad_backbone.md), the trade for memory.

torch's non-reentrant checkpoint keeps its inputs as they are, so this is an autograd Function in the reentrant
style of ``torch.utils.checkpoint``: forward without a graph, backward re-runs the block under the forward's RNG
state and autocast settings and back-propagates through it.
"""
from typing import Any, Callable, Optional, Tuple

import torch
from torch import Tensor

STORAGES = ('bf16', 'fp8')
_FP8 = torch.float8_e4m3fn
_FP8_MAX = torch.finfo(_FP8).max


def compress(x: Tensor, storage: str) -> Tuple[Tensor, Optional[Tensor]]:
    """``(packed, scale)``: bf16 values, or fp8 values with a per-row (last dim) float32 scale."""
    if storage == 'bf16':
        return x.to(torch.bfloat16), None
    scale = x.detach().abs().amax(dim=-1, keepdim=True).float().clamp_min(1e-12) / _FP8_MAX
    return (x / scale).to(_FP8), scale


def decompress(packed: Tensor, scale: Optional[Tensor], dtype: torch.dtype) -> Tensor:
    """The inverse of :func:`compress`, in ``dtype``."""
    return packed.to(dtype) if scale is None else (packed.float() * scale).to(dtype)


class _CompressedCheckpoint(torch.autograd.Function):

    @staticmethod
    def forward(ctx, function: Callable[..., Tensor], storage: str, x: Tensor, _needs_grad: Tensor,
                *args: Any) -> Tensor:
        device = x.device
        ctx.function, ctx.args, ctx.x_dtype, ctx.x_grad = function, args, x.dtype, x.requires_grad
        ctx.autocast = (device.type, torch.is_autocast_enabled(device.type), torch.get_autocast_dtype(device.type))
        ctx.cpu_rng = torch.get_rng_state()
        ctx.device_rng = torch.cuda.get_rng_state(device) if device.type == 'cuda' else None
        packed, scale = compress(x, storage)
        ctx.save_for_backward(packed, scale)
        with torch.no_grad():
            return function(x, *args)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> Tuple[Optional[Tensor], ...]:
        packed, scale = ctx.saved_tensors
        x = decompress(packed, scale, ctx.x_dtype).requires_grad_(ctx.x_grad)
        device_type, autocast, autocast_dtype = ctx.autocast
        devices = [x.device] if ctx.device_rng is not None else []
        with torch.random.fork_rng(devices=devices, device_type=device_type if devices else 'cuda'):
            torch.set_rng_state(ctx.cpu_rng)
            if ctx.device_rng is not None:
                torch.cuda.set_rng_state(ctx.device_rng, x.device)
            with torch.enable_grad(), torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast):
                out = ctx.function(x, *ctx.args)
        if out.requires_grad:
            torch.autograd.backward(out, grad_out)
        return (None, None, x.grad if ctx.x_grad else None, None) + (None,) * len(ctx.args)


def compressed_checkpoint(function: Callable[..., Tensor], x: Tensor, *args: Any, storage: str) -> Tensor:
    """``function(x, *args)`` whose input is kept as ``storage`` (``'bf16'``/``'fp8'``) and recomputed in backward.

    ``args`` are passed through untouched (no gradient flows to them). The parameters used by ``function`` get their
    gradients during this backward, as with reentrant checkpointing.
    """
    if storage not in STORAGES:
        raise ValueError(f'checkpoint storage must be one of {STORAGES}, got {storage!r}.')
    # The output must join the graph even when x (say, a frozen embedding's output) does not require grad.
    needs_grad = torch.empty(0, device=x.device, requires_grad=True)
    return _CompressedCheckpoint.apply(function, storage, x, needs_grad, *args)
