"""The LoRA linear inside ``torch.compile``: the low-rank product inside the base GEMMs, in ops inductor traces.

Compiled plain ops (:func:`.functional.lora_linear_plain`) pay the low-rank part with a full-width tensor in each
direction: forward writes ``xA·Bᵀ`` (rows × out) and an add reads it back; backward does the same with ``g·A``
(rows × in) for the input gradient, and reads ``dy`` once more for ``g = dy·B``. :class:`LoRAConcatGEMM` concatenates
along the reduction dimension instead, as the eager fused function does, ``[x | s·xA] @ [W | B]ᵀ`` forward and
``[dy | s·g] @ [W ; A]`` backward, with its own rule for where (:func:`concat_directions`: inductor writes a norm's or
GELU's output straight into the concatenated operand, so a concatenation costs less than in eager). Elsewhere backward
takes ``g`` from extra columns of the input-gradient GEMM, ``dy @ [W | B]``. An autograd function of our own because
no plain op gives ``B`` its gradient from a concatenated ``[W | B]`` without the full weight gradient; ``A``'s comes
from the plain op that makes ``xA`` from the detached input. Measured gains: benchmarks/RESULTS.md, session 13.

Before torch 2.12 the ops of an autograd function inside an activation-checkpointed block got no recompute tags, so
compiled checkpointed blocks kept all their activations (pytorch#177396; 4.5x on an H200 with torch 2.11); there the
layers keep the plain ops (:data:`AUTOGRAD_FUNCTIONS_RECOMPUTED`).
"""
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from .functional import compute_dtype
from .quant import is_quantized


# torch >= 2.12 tags the ops of autograd functions inside checkpointed regions for recomputation (pytorch#177396;
# tests/test_peft/test_compiled_lora.py checks the tags); a 2.12 pre-release may predate the fix
AUTOGRAD_FUNCTIONS_RECOMPUTED = torch.__version__ >= (2, 12)
# Fewer rows keep plain ops: the concatenations copy W (free when autocast casts it anyway), which the activation
# passes they save outweigh only for many rows; measured on ViT steps of 12288 rows and more
CONCAT_MIN_ROWS = 8192


def concat_directions(in_features: int, out_features: int) -> Tuple[bool, bool]:
    """``(forward, backward)``: whether each direction concatenates (qkv, proj, fc1 forward; fc2 backward). Forward
    writes ``x`` once more (the norm or GELU before the layer writes it into the concatenated operand too) where plain
    ops write and read ``xA·Bᵀ`` (two passes over ``out`` columns); backward copies ``dy`` and reads it for ``g``
    (three over ``out``) where the other form writes and reads ``g·A`` (two over ``in``)."""
    return out_features >= in_features, 3 * out_features < 2 * in_features


class LoRAConcatGEMM(torch.autograd.Function):
    """``x @ Wᵀ + s·xa @ Bᵀ`` for a frozen ``W`` and ``xa = x @ Aᵀ`` made by the caller from the detached ``x``.

    Gradients: ``x`` gets ``dy W + s·g A`` (``g = dy B``), ``xa`` gets ``s·g`` (the caller's op turns it into
    ``A``'s gradient), ``B`` gets ``s·dyᵀ xa``; ``W`` and the ``A`` passed here (read for ``dx`` only) get none.
    Parameters come in their stored dtype and are cast to ``x``'s inside, in forward and again in backward, so
    no cast copy is saved for backward.
    """

    @staticmethod
    def forward(ctx, x: Tensor, xa: Tensor, weight: Tensor, lora_a: Tensor, lora_b: Tensor, scaling: float,
                concat_forward: bool, concat_backward: bool) -> Tensor:
        dtype = x.dtype
        w, b = weight.to(dtype), lora_b.to(dtype)
        if concat_forward:
            out = torch.cat([x, xa * scaling], 1) @ torch.cat([w, b], 1).t()
        else:
            out = x @ w.t() + (xa @ b.t()) * scaling
        ctx.save_for_backward(xa, weight, lora_a, lora_b)
        ctx.scaling, ctx.concat_backward = scaling, concat_backward
        return out

    @staticmethod
    def backward(ctx, dy: Tensor) -> Tuple[Optional[Tensor], ...]:
        xa, weight, lora_a, lora_b = ctx.saved_tensors
        scaling, dtype = ctx.scaling, dy.dtype
        w, a, b = weight.to(dtype), lora_a.to(dtype), lora_b.to(dtype)
        if ctx.needs_input_grad[0] and not ctx.concat_backward:
            both = dy @ torch.cat([w, b], 1)
            g = both[:, w.shape[1]:]
            dx = both[:, :w.shape[1]] + (g * scaling) @ a
        else:
            g = dy @ b
            dx = torch.cat([dy, g * scaling], 1) @ torch.cat([w, a], 0) if ctx.needs_input_grad[0] else None
        grad_b = (dy.t() @ xa) * scaling if ctx.needs_input_grad[4] else None
        return dx, g * scaling, None, None, grad_b, None, None, None


def applies(base_layer: nn.Module, x: Tensor, dropout_p: float, training: bool) -> bool:
    """Whether :func:`lora_linear_compiled` serves a layer's call on ``x``: while compiling on torch >= 2.12, for a
    frozen float base (a quantized one dequantizes through its own ops), without dropout in training (its mask would
    enter ``dx``, which the concatenated GEMM computes without it), from :data:`CONCAT_MIN_ROWS` rows."""
    return (AUTOGRAD_FUNCTIONS_RECOMPUTED and torch.compiler.is_compiling() and not is_quantized(base_layer)
            and not base_layer.weight.requires_grad and not (dropout_p > 0.0 and training)
            and x.numel() >= CONCAT_MIN_ROWS * x.shape[-1])


def lora_linear_compiled(x: Tensor, weight: Tensor, bias: Optional[Tensor], lora_a: Tensor, lora_b: Tensor,
                         scaling: float) -> Tensor:
    """``x @ Wᵀ + b + x @ Aᵀ @ Bᵀ * scaling`` in the compute dtype (autocast's or ``x``'s) for a frozen float base
    and no dropout, as :class:`LoRAConcatGEMM`."""
    dtype = compute_dtype(x)
    x2d = x.reshape(-1, x.shape[-1]).to(dtype)
    xa = x2d.detach() @ lora_a.to(dtype).t()
    out = LoRAConcatGEMM.apply(x2d, xa, weight, lora_a, lora_b, scaling,
                               *concat_directions(weight.shape[1], weight.shape[0]))
    if bias is not None:
        out = out + bias.to(dtype)
    return out.reshape(*x.shape[:-1], out.shape[-1])
