"""Functions a fused LoRA layer can apply to its own input and recompute in backward: ``linear(fn(x))`` keeping ``x``.

LoRA needs the layer's input for ``dA``, so ``linear(fn(x))`` would keep a copy of ``fn(x)``. But ``fn``'s own
backward keeps ``x`` already (an activation keeps its input, a LayerNorm its input and two statistics per row): a
layer that applies ``fn`` itself and saves ``x`` keeps nothing more than the model without LoRA, and recomputes
``fn(x)`` in backward (elementwise or row-wise work, small next to the GEMMs). In a ViT block these are the inputs of
``qkv`` and ``fc1`` (after the norms) and of ``fc2`` (after GELU): without this, most of what LoRA adds to a block's
activation memory.

Supported: GELU, SiLU and ReLU (not in place), whose ATen backward needs only the input, and ``nn.LayerNorm`` whose
affine parameters are frozen (or absent). Anything else is applied first, as usual (:func:`is_recomputable`).
"""
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import torch
from torch import Tensor, nn

aten = torch.ops.aten


class _Recompute(NamedTuple):
    forward: Callable[[nn.Module, Tensor, bool], Tuple[Tensor, Any]]  # (fn, x, autocast on) -> (fn(x), aux)
    backward: Callable[[nn.Module, Tensor, Tensor, Any], Tensor]  # (fn, grad of fn(x), x, aux) -> grad of x


def _activation(backward: Callable[[nn.Module, Tensor, Tensor], Tensor]) -> _Recompute:
    return _Recompute(lambda fn, x, autocast: (fn(x), None), lambda fn, grad, x, aux: backward(fn, grad.to(x.dtype), x))


def _layer_norm_forward(norm: nn.LayerNorm, x: Tensor, autocast: bool) -> Tuple[Tensor, Any]:
    pre = x.float() if autocast else x  # autocast runs layer_norm in float32
    weight = None if norm.weight is None else norm.weight.to(pre.dtype)
    bias = None if norm.bias is None else norm.bias.to(pre.dtype)
    out, mean, rstd = aten.native_layer_norm(pre, norm.normalized_shape, weight, bias, norm.eps)
    return out, (mean, rstd, pre.dtype)


def _layer_norm_backward(norm: nn.LayerNorm, grad: Tensor, x: Tensor, aux: Any) -> Tensor:
    mean, rstd, dtype = aux
    weight = None if norm.weight is None else norm.weight.to(dtype)
    bias = None if norm.bias is None else norm.bias.to(dtype)
    grad_x = aten.native_layer_norm_backward(grad.to(dtype), x.to(dtype), norm.normalized_shape, mean, rstd, weight,
                                             bias, [True, False, False])[0]
    return grad_x.to(x.dtype)


_RECOMPUTABLE: Dict[type, _Recompute] = {
    nn.GELU: _activation(lambda fn, grad, x: aten.gelu_backward(grad, x, approximate=fn.approximate)),
    nn.SiLU: _activation(lambda fn, grad, x: aten.silu_backward(grad, x)),
    nn.ReLU: _activation(lambda fn, grad, x: aten.threshold_backward(grad, x, 0)),
    nn.LayerNorm: _Recompute(_layer_norm_forward, _layer_norm_backward),
}


def is_recomputable(fn: nn.Module) -> bool:
    """Whether a fused layer can take ``fn`` as its input function (see the module docstring)."""
    if type(fn) not in _RECOMPUTABLE or getattr(fn, 'inplace', False):
        return False
    return not any(param.requires_grad for param in fn.parameters())


def apply_input_fn(fn: nn.Module, x: Tensor, autocast: bool) -> Tuple[Tensor, Any]:
    """``fn(x)`` as the model computes it (``autocast``: whether autocast was on), and what its backward needs."""
    return _RECOMPUTABLE[type(fn)].forward(fn, x, autocast)


def aux_to_save(fn: nn.Module, aux: Any) -> Tuple[Tensor, ...]:
    """The tensors of forward's ``aux`` worth saving for backward: a LayerNorm's per-row statistics (two floats per
    row), which spare backward applying the norm again when a kernel computes it (:func:`kernel_prologue`)."""
    return tuple(aux[:2]) if type(fn) is nn.LayerNorm else ()


def saved_aux(saved: Tuple[Tensor, ...], x: Tensor, autocast: bool) -> Any:
    """``aux`` again from :func:`aux_to_save`'s tensors and the input ``x`` (None for the activations)."""
    return (*saved, torch.float32 if autocast else x.dtype) if saved else None


def input_fn_backward(fn: nn.Module, grad: Tensor, x: Tensor, aux: Any) -> Tensor:
    """The gradient of ``x`` from the gradient of ``fn(x)``."""
    return _RECOMPUTABLE[type(fn)].backward(fn, grad, x, aux)


class Prologue(NamedTuple):
    """What a Triton kernel needs to compute ``fn(x)`` from ``x`` in registers instead of ``fn(x)`` being written and
    read in memory: ``kind`` 1 is a LayerNorm over the last dimension with its affine ``weight``/``bias`` (or None)
    and, for the dA kernel (:func:`.dropout_kernels.grad_a`), forward's per-row ``mean``/``rstd`` (float32; the
    forward kernel :func:`.dropout_kernels.fn_xa` computes them), 2 the exact GELU."""
    kind: int
    mean: Optional[Tensor] = None
    rstd: Optional[Tensor] = None
    weight: Optional[Tensor] = None
    bias: Optional[Tensor] = None


def kernel_prologue(fn: nn.Module, aux: Any) -> Optional[Prologue]:
    """The :class:`Prologue` of ``fn`` given forward's ``aux`` (from :func:`apply_input_fn`), or None where the
    kernels do not compute ``fn`` (it is then applied again in memory)."""
    if type(fn) is nn.GELU and fn.approximate == 'none':
        return Prologue(2)
    if type(fn) is nn.LayerNorm and len(fn.normalized_shape) == 1:
        mean, rstd, dtype = aux
        weight = None if fn.weight is None else fn.weight.to(dtype)
        bias = None if fn.bias is None else fn.bias.to(dtype)
        return Prologue(1, mean.reshape(-1), rstd.reshape(-1), weight, bias)
    return None


def forward_prologue(fn: nn.Module, x: Tensor, autocast: bool) -> Optional[Tuple[Prologue, float]]:
    """``fn`` as a :class:`Prologue` (without statistics: the kernel computes them) and a LayerNorm's ``eps``, for a
    kernel that applies it in forward (:func:`.dropout_kernels.fn_xa`); affine parameters in the dtype the norm
    computes in (float32 under autocast, as :func:`apply_input_fn`). None where no kernel computes ``fn``."""
    if type(fn) is nn.GELU and fn.approximate == 'none':
        return Prologue(2), 0.0
    if type(fn) is not nn.LayerNorm or len(fn.normalized_shape) != 1:
        return None
    dtype = torch.float32 if autocast else x.dtype
    weight = None if fn.weight is None else fn.weight.to(dtype)
    bias = None if fn.bias is None else fn.bias.to(dtype)
    return Prologue(1, weight=weight, bias=bias), fn.eps
