"""The LoRA maths, kept apart from the module bookkeeping so fast paths can replace it.

Two implementations of ``y = x @ W.T + b + dropout(x) @ A.T @ B.T * s`` with identical results:

* ``lora_linear_reference``: plain autograd ops (what PEFT does). Every fast path is tested against it.
* ``FusedLoRALinear``: one ``autograd.Function`` per layer. Backward computes ``g = dy @ B`` once and reuses it for
  both ``dx`` and ``dA``; it saves only ``x`` (or the dropped-out ``x`` and its mask) and the rank-``r`` ``x @ A.T``.
  The frozen base weight gets no gradient, so no activation is kept for it; its compute-dtype copy is kept as
  autocast would.

The low-rank product is added inside the base GEMM by concatenating along the reduction dimension:
``x @ W.T + (x A.T) @ (s B).T == [x | x A.T] @ [W | s B].T`` and ``dy @ W + g @ A == [dy | g] @ [W ; A]``. One
cuBLAS GEMM with ``K + r`` instead of ``K`` then writes the output once, where a separate ``addmm_`` reads and
writes the whole output again. The concatenation costs one copy of ``x`` (or ``dy``), so it is used where the
output is at least twice as wide as that operand; otherwise the low-rank product is ``addmm_``-ed into the output.
Both forms issue about as many host-side operations as each other, which matters as much as GPU time: eager LoRA
steps are often bound by the host issuing kernels (benchmarks/RESULTS.md).

For a quantized (QLoRA) base the same function takes a ``dequantize`` callable instead of a weight: the 4/8-bit
weight is dequantized once per step to the compute dtype (weight-only quantization: activations stay in float).
"""
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def lora_delta(x: Tensor, lora_a: Tensor, lora_b: Tensor, scaling: float, dropout_p: float = 0.0,
               training: bool = False) -> Tensor:
    """``dropout(x) @ A.T @ B.T * scaling`` for linear layers, computed in the dtype of ``A``."""
    x = x.to(lora_a.dtype)
    if dropout_p > 0.0 and training:
        x = F.dropout(x, dropout_p, training=True)
    return F.linear(F.linear(x, lora_a), lora_b) * scaling


def lora_linear_reference(x: Tensor, weight: Tensor, bias: Optional[Tensor], lora_a: Tensor, lora_b: Tensor,
                          scaling: float, dropout_p: float = 0.0, training: bool = False) -> Tensor:
    """The reference LoRA linear: three autograd ops, as PEFT computes it."""
    result = F.linear(x, weight, bias)
    return result + lora_delta(x, lora_a, lora_b, scaling, dropout_p, training).to(result.dtype)


def _compute_dtype(x: Tensor) -> torch.dtype:
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


class FusedLoRALinear(torch.autograd.Function):
    """``x @ W.T + b + dropout(x) @ A.T @ B.T * s`` with a hand-written, memory-lean backward.

    ``weight`` is the base weight, or None together with ``dequantize(dtype) -> Tensor`` for a quantized base.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], lora_a: Tensor, lora_b: Tensor,
                scaling: float, dropout_p: float, training: bool,
                dequantize: Optional[Callable[[torch.dtype], Tensor]] = None) -> Tensor:
        # Every operand is cast to the compute dtype explicitly, so autocast (if on) has nothing left to do here;
        # the body is kept short because eager LoRA steps are often bound by the host issuing kernels.
        dtype = _compute_dtype(x)
        in_features = x.shape[-1]
        # The compute-dtype weight is kept for backward, as autocast keeps its cast copy for a frozen layer:
        # no second cast or dequantization in backward, and no more memory than the frozen floor.
        base_weight = dequantize(dtype) if dequantize is not None else weight.to(dtype)
        bias_c = bias.to(dtype) if bias is not None else None
        a_c, b_c = lora_a.to(dtype), (lora_b * scaling).to(dtype)  # B is scaled once, here, for both passes
        x2d = x.reshape(-1, in_features).to(dtype)
        mask = None
        lora_in = x2d
        if dropout_p > 0.0 and training:
            # native_dropout is what F.dropout runs (same RNG stream as the reference path and PEFT, on the same
            # memory layout, hence x's own layout when x is not contiguous); it also returns the mask for backward.
            source = x2d if x.is_contiguous() else x.to(dtype)
            lora_in, mask = torch.ops.aten.native_dropout(source, dropout_p, True)
            lora_in, mask = lora_in.reshape(x2d.shape), mask.reshape(x2d.shape)
        xa = lora_in @ a_c.t()  # (N, r): the only extra activation LoRA keeps
        if base_weight.shape[0] >= 2 * in_features:  # the output is the widest tensor: [x | xa] @ [W | sB].T
            x_wide = torch.cat([x2d, xa], dim=1)
            weight_wide = torch.cat([base_weight, b_c], dim=1)
            out = F.linear(x_wide, weight_wide, bias_c)
            base_weight = weight_wide[:, :in_features]
            if mask is None:  # save x and xa as views of the wide operand (with dropout, x_wide is not kept)
                lora_in, xa = x_wide[:, :in_features], x_wide[:, in_features:]
        else:
            out = F.linear(x2d, base_weight, bias_c).addmm_(xa, b_c.t())
        ctx.save_for_backward(lora_in, xa, mask, base_weight, a_c, b_c)
        ctx.meta = (scaling, dtype, dropout_p, x.shape, x.dtype, weight.dtype if weight is not None else None,
                    bias.dtype if bias is not None else None, lora_a.dtype, lora_b.dtype)  # one attribute: cheaper
        return out.reshape(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> Tuple[Optional[Tensor], ...]:
        lora_in, xa, mask, base_weight, a_c, b_c = ctx.saved_tensors
        scaling, dtype, dropout_p, x_shape, x_dtype, weight_dtype, bias_dtype, a_dtype, b_dtype = ctx.meta
        need_x, need_w, need_bias, need_a, need_b = ctx.needs_input_grad[:5]
        out_features = grad_out.shape[-1]
        dy = grad_out.reshape(-1, out_features).to(dtype)
        g = dy @ b_c  # (N, r) = dy @ (s B), shared by dx and dA
        grad_x = grad_w = grad_b = grad_a = grad_bb = None
        if need_x and mask is None and base_weight.shape[1] >= 2 * out_features:  # [dy | g] @ [W ; A]
            grad_x = torch.cat([dy, g], dim=1) @ torch.cat([base_weight, a_c], dim=0)
        elif need_x:
            grad_lora_in = g @ a_c
            if mask is not None:
                grad_lora_in = grad_lora_in * mask * (1.0 / (1.0 - dropout_p))
            grad_x = torch.addmm(grad_lora_in, dy, base_weight)
        if grad_x is not None:
            grad_x = grad_x.reshape(x_shape).to(x_dtype)
        if need_w:  # a trainable base never meets dropout here (see can_fuse)
            grad_w = (dy.t() @ lora_in).to(weight_dtype)
        if need_bias:
            grad_b = dy.sum(0).to(bias_dtype)
        if need_a:
            grad_a = (g.t() @ lora_in).to(a_dtype)
        if need_b:
            grad_bb = (dy.t() @ xa).mul_(scaling).to(b_dtype)
        return grad_x, grad_w, grad_b, grad_a, grad_bb, None, None, None, None


def can_fuse(weight: Tensor, dropout_p: float, training: bool) -> bool:
    """Whether the fused path applies to a float base: not when a trainable base meets LoRA dropout."""
    return weight.is_floating_point() and not (weight.requires_grad and dropout_p > 0.0 and training)


def lora_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], lora_a: Tensor, lora_b: Tensor, scaling: float,
                dropout_p: float = 0.0, training: bool = False, fused: bool = True) -> Tensor:
    """LoRA linear forward for a float base; the fused path where it applies, else the reference path."""
    if fused and can_fuse(weight, dropout_p, training):
        return FusedLoRALinear.apply(x, weight, bias, lora_a, lora_b, scaling, dropout_p, training, None)
    return lora_linear_reference(x, weight, bias, lora_a, lora_b, scaling, dropout_p, training)


def qlora_linear(x: Tensor, dequantize: Callable[[torch.dtype], Tensor], bias: Optional[Tensor], lora_a: Tensor,
                 lora_b: Tensor, scaling: float, dropout_p: float = 0.0, training: bool = False,
                 fused: bool = True) -> Tensor:
    """LoRA linear forward for a quantized base given by ``dequantize(dtype)``; fused unless ``fused=False``."""
    if fused:
        return FusedLoRALinear.apply(x, None, bias, lora_a, lora_b, scaling, dropout_p, training, dequantize)
    weight = dequantize(_compute_dtype(x))
    return lora_linear_reference(x, weight, bias, lora_a, lora_b, scaling, dropout_p, training)


def conv_delta_weight(lora_a: Tensor, lora_b: Tensor, scaling: float) -> Tensor:
    """The dense kernel equal to a conv ``A`` (kernel k) followed by a 1x..x1 conv ``B``, times ``scaling``."""
    b = lora_b.flatten(1)  # (out, r)
    return torch.einsum('or,r...->o...', b, lora_a) * scaling


def linear_delta_weight(lora_a: Tensor, lora_b: Tensor, scaling: float,
                        dtype: Optional[torch.dtype] = None) -> Tensor:
    """``B @ A * scaling`` in float32 (exact enough to merge into any dtype), cast to ``dtype`` if given."""
    delta = (lora_b.float() @ lora_a.float()) * scaling
    return delta if dtype is None else delta.to(dtype)
