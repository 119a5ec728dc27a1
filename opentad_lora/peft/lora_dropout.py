"""How the fused LoRA function applies LoRA dropout; eager steps keep no mask and no dropped-out copy for backward.

Three ways, chosen per call by :func:`dropout_forward` (the first that applies):

* ``'kernel'`` (CUDA with Triton): :mod:`.dropout_kernels` makes the mask in registers inside the rank-``r``
  products; only a Philox seed is kept. No ``(N, K)`` tensor is written for dropout in forward or backward.
  ``OPENTAD_LORA_DROPOUT_KERNEL=torch`` turns it off (then CUDA draws torch's own mask, PEFT's numbers);
  ``=interpret`` also sends CPU tensors to them through Triton's interpreter (tests; needs ``TRITON_INTERPRET=1``
  before Triton is imported).
* ``'redraw'`` (CPU, CUDA, eager): torch's ``native_dropout`` (the reference's and PEFT's mask); the generator state is
  kept and backward draws the same mask again.
* ``'keep'`` (other devices, whose generator state cannot be restored): ``native_dropout``'s bool mask is kept for
  backward.

Compiled steps do not come here: inside ``torch.compile`` LoRA layers take plain autograd ops
(:func:`.functional.use_plain_path`), whose ``F.dropout`` inductor generates and fuses itself (its own random stream).
"""
import os
from typing import Optional, Tuple

import torch
from torch import Tensor

_CHOICES = ('auto', 'torch', 'interpret')
_KERNEL_MAX_ELEMENTS = 2 ** 31 - 1  # the kernels' offsets and Philox counters are int32 element indices


def kernels():
    """:mod:`.dropout_kernels`, or None without Triton."""
    try:
        from . import dropout_kernels
    except ImportError:  # no Triton
        return None
    return dropout_kernels


def kernel_applies(x: Tensor, rank: int) -> bool:
    """Whether the Triton kernels serve this input (any shape): a CUDA tensor (or a CPU one with ``=interpret``),
    Triton installed, an ``(N, K + rank)`` operand of fewer than 2**31 elements (the kernels' offsets are int32),
    rank <= 128."""
    choice = os.environ.get('OPENTAD_LORA_DROPOUT_KERNEL', 'auto')
    if choice not in _CHOICES:
        raise ValueError(f'OPENTAD_LORA_DROPOUT_KERNEL={choice!r}: use one of {_CHOICES} (or leave it unset).')
    width = max(x.shape[-1], 1)
    if choice == 'torch' or x.numel() // width * (width + rank) > _KERNEL_MAX_ELEMENTS or rank > 128:
        return False
    on_device = x.device.type == 'cuda' or (x.device.type == 'cpu' and choice == 'interpret')
    return on_device and kernels() is not None


def _rng_state(device: torch.device) -> Optional[Tensor]:
    """The state dropout draws from on ``device``; None where it cannot be restored (then the mask is kept)."""
    if device.type == 'cuda':
        return torch.cuda.get_rng_state(device)
    if device.type == 'cpu':
        return torch.get_rng_state()
    return None


def _set_rng_state(state: Tensor, device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


def _redraw(source: Tensor, dropout_p: float, state: Tensor) -> Tuple[Tensor, Tensor]:
    """``native_dropout(source)`` drawn again from forward's generator ``state``; the generator itself is untouched."""
    current = _rng_state(source.device)
    _set_rng_state(state, source.device)
    try:
        return torch.ops.aten.native_dropout(source, dropout_p, True)
    finally:
        _set_rng_state(current, source.device)


def dropout_forward(source: Tensor, lora_a: Tensor, dropout_p: float) -> Tuple[Tensor, str, Tensor]:
    """``dropout(source) @ A.T`` as ``(N, r)``, the way it was drawn, and what backward needs to draw it again.

    ``source`` is the input in the compute dtype and in the caller's layout (torch draws its mask in that layout).
    """
    x2d = source.reshape(-1, source.shape[-1])
    if kernel_applies(x2d, lora_a.shape[0]):
        seed = kernels().new_seed(source.device)  # rows may be strided (a wide layer's operand)
        return kernels().dropout_xa(kernels().rows(x2d), lora_a, seed, dropout_p), 'kernel', seed
    state = _rng_state(source.device)
    dropped, mask = torch.ops.aten.native_dropout(source, dropout_p, True)
    xa = dropped.reshape(x2d.shape) @ lora_a.t()
    return (xa, 'redraw', state) if state is not None else (xa, 'keep', mask)


def dropout_grad_a(way: str, saved: Tensor, source: Tensor, g: Tensor, dropout_p: float,
                   need_a: bool) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """``g.T @ dropout(source)`` with forward's mask (None unless ``need_a``), and that mask for
    :func:`dropout_grad_x` (None for the kernels, which make it again). ``g = dy @ (s B)``."""
    x2d = source.reshape(-1, source.shape[-1])
    if way == 'kernel':
        return (kernels().grad_a(g, x2d.contiguous(), saved, dropout_p) if need_a else None), None
    if way == 'redraw':
        dropped, mask = _redraw(source, dropout_p, saved)
    else:
        mask = saved
        dropped = source * mask * (1.0 / (1.0 - dropout_p))
    return (g.t() @ dropped.reshape(x2d.shape) if need_a else None), mask


def dropout_grad_x(way: str, saved: Tensor, mask: Optional[Tensor], g: Tensor, lora_a: Tensor, dy: Tensor,
                   base_weight: Tensor, dropout_p: float) -> Tensor:
    """``dy @ W + mask * (g @ A) / (1 - p)``: for the torch ways one ``(N, K)`` temporary at a time (this runs first
    in a checkpointed block's backward, while everything the block saved is alive: the step's peak)."""
    if way == 'kernel':
        return kernels().add_dropout_grad_x(dy @ base_weight, g, lora_a, saved, dropout_p)
    grad_x = ((g * (1.0 / (1.0 - dropout_p))) @ lora_a).mul_(mask.reshape(-1, lora_a.shape[1]))
    return grad_x.addmm_(dy, base_weight)
