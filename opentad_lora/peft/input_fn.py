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
from typing import Any, Callable, Dict, NamedTuple, Tuple

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


def input_fn_backward(fn: nn.Module, grad: Tensor, x: Tensor, aux: Any) -> Tensor:
    """The gradient of ``x`` from the gradient of ``fn(x)``."""
    return _RECOMPUTABLE[type(fn)].backward(fn, grad, x, aux)
