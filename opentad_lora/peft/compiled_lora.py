"""The LoRA linear inside ``torch.compile``: the low-rank product inside the base GEMMs, in ops inductor traces.

Compiled plain ops (:func:`.functional.lora_linear_plain`) pay the low-rank part with a full-width tensor in each
direction: forward writes ``xA·Bᵀ`` (rows × out) and an add reads it back; backward does the same with ``g·A``
(rows × in) for the input gradient, and reads ``dy`` once more for ``g = dy·B``. :class:`LoRAConcatGEMM` concatenates
along the reduction dimension instead, as the eager fused function does, ``[x | s·xA] @ [W | B]ᵀ`` forward and
``[dy | s·g] @ [W ; A]`` backward, with its own rule for where (:func:`concat_directions`: inductor writes a norm's or
GELU's output straight into the concatenated operand, so a concatenation costs less than in eager). Elsewhere backward
takes ``g`` from extra columns of the input-gradient GEMM, ``dy @ [W | B]``. An autograd function of our own because
no plain op gives ``B`` its gradient from a concatenated ``[W | B]`` without the full weight gradient; ``A``'s comes
from the plain op that makes ``xA`` from the detached input. A bitsandbytes base is dequantized inside it, in forward
and again in backward, by torch ops that inductor writes straight into ``[W | B]`` (:func:`frozen_weight`). Measured
gains: benchmarks/RESULTS.md, sessions 13 (float bases) and 14 (QLoRA-4).

Before torch 2.12 the ops of an autograd function inside an activation-checkpointed block got no recompute tags, so
compiled checkpointed blocks kept all their activations (pytorch#177396; 4.5x on an H200 with torch 2.11); there the
layers keep the plain ops (:data:`AUTOGRAD_FUNCTIONS_RECOMPUTED`).
"""
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from .functional import compute_dtype
from .quant import dequantize_weight, is_quantized


# torch >= 2.12 tags the ops of autograd functions inside checkpointed regions for recomputation (pytorch#177396;
# tests/test_peft/test_compiled_lora.py checks the tags); a 2.12 pre-release may predate the fix
AUTOGRAD_FUNCTIONS_RECOMPUTED = torch.__version__ >= (2, 12)
# Float bases of fewer rows keep plain ops: the concatenations copy W (free when autocast casts it anyway), which the
# activation passes they save outweigh only for many rows; measured on ViT steps of 12288 rows and more. Quantized
# bases take the function at any rows: dequantization writes W either way, and plain ops keep that copy for backward
CONCAT_MIN_ROWS = 8192


def concat_directions(in_features: int, out_features: int) -> Tuple[bool, bool]:
    """``(forward, backward)``: whether each direction concatenates (qkv, proj, fc1 forward; fc2 backward). Forward
    writes ``x`` once more (the norm or GELU before the layer writes it into the concatenated operand too) where plain
    ops write and read ``xA·Bᵀ`` (two passes over ``out`` columns); backward copies ``dy`` and reads it for ``g``
    (three over ``out``) where the other form writes and reads ``g·A`` (two over ``in``)."""
    return out_features >= in_features, 3 * out_features < 2 * in_features


def frozen_weight(base_layer: nn.Module, dtype: torch.dtype) -> Tensor:
    """The frozen base weight in ``dtype``: cast, or dequantized from a bitsandbytes layer (by torch ops that
    inductor fuses into the concatenation that reads it, :func:`.quant._dequantize_4bit_in_torch_ops`)."""
    if is_quantized(base_layer):
        return dequantize_weight(base_layer, dtype)
    return base_layer.weight.to(dtype)


class LoRAConcatGEMM(torch.autograd.Function):
    """``x @ Wᵀ + s·xa @ Bᵀ`` for the frozen weight ``W`` of ``base_layer`` and ``xa = x @ Aᵀ`` made by the
    caller from the detached ``x``.

    Gradients: ``x`` gets ``dy W + s·g A`` (``g = dy B``), ``xa`` gets ``s·g`` (the caller's op turns it into
    ``A``'s gradient), ``B`` gets ``s·dyᵀ xa``; ``W`` and the ``A`` passed here (read for ``dx`` only) get none.
    ``W`` is cast or dequantized to ``x``'s dtype inside, in forward and again in backward, and the parameters come
    in their stored dtype, so nothing weight-sized is kept for backward (a dequantized weight made outside would be:
    inductor never recomputes what a matrix product reads in backward).
    """

    @staticmethod
    def forward(ctx, x: Tensor, xa: Tensor, base_layer: nn.Module, lora_a: Tensor, lora_b: Tensor, scaling: float,
                concat_forward: bool, concat_backward: bool) -> Tensor:
        dtype = x.dtype
        w, b = frozen_weight(base_layer, dtype), lora_b.to(dtype)
        if concat_forward:
            out = torch.cat([x, xa * scaling], 1) @ torch.cat([w, b], 1).t()
        else:
            out = x @ w.t() + (xa @ b.t()) * scaling
        ctx.save_for_backward(xa, lora_a, lora_b)
        ctx.base_layer, ctx.scaling, ctx.concat_backward = base_layer, scaling, concat_backward
        return out

    @staticmethod
    def backward(ctx, dy: Tensor) -> Tuple[Optional[Tensor], ...]:
        xa, lora_a, lora_b = ctx.saved_tensors
        scaling, dtype = ctx.scaling, dy.dtype
        a, b = lora_a.to(dtype), lora_b.to(dtype)
        if ctx.needs_input_grad[0] and not ctx.concat_backward:
            # [W | sB], not forward's [W | B]: traced, the same operand would be one node, kept for backward
            w = frozen_weight(ctx.base_layer, dtype)
            both = dy @ torch.cat([w, b * scaling], 1)
            g_scaled = both[:, w.shape[1]:]
            dx = both[:, :w.shape[1]] + g_scaled @ a
        else:
            g_scaled = dy @ (b * scaling)
            dx = (torch.cat([dy, g_scaled], 1) @ torch.cat([frozen_weight(ctx.base_layer, dtype), a], 0)
                  if ctx.needs_input_grad[0] else None)
        grad_b = (dy.t() @ xa) * scaling if ctx.needs_input_grad[4] else None
        return dx, g_scaled, None, None, grad_b, None, None, None


def applies(base_layer: nn.Module, x: Tensor, dropout_p: float, training: bool) -> bool:
    """Whether :func:`lora_linear_compiled` serves a layer's call on ``x``: while compiling on torch >= 2.12, for a
    frozen base, without dropout in training (its mask would enter ``dx``, which the concatenated GEMM computes
    without it); a float base from :data:`CONCAT_MIN_ROWS` rows, a quantized one at any."""
    return (AUTOGRAD_FUNCTIONS_RECOMPUTED and torch.compiler.is_compiling()
            and not base_layer.weight.requires_grad and not (dropout_p > 0.0 and training)
            and (is_quantized(base_layer) or x.numel() >= CONCAT_MIN_ROWS * x.shape[-1]))


def lora_linear_compiled(x: Tensor, base_layer: nn.Module, lora_a: Tensor, lora_b: Tensor, scaling: float) -> Tensor:
    """``base_layer(x) + x @ Aᵀ @ Bᵀ * scaling`` in the compute dtype (autocast's or ``x``'s) for a frozen linear or
    bitsandbytes base and no dropout, as :class:`LoRAConcatGEMM`."""
    dtype = compute_dtype(x)
    x2d = x.reshape(-1, x.shape[-1]).to(dtype)
    xa = x2d.detach() @ lora_a.to(dtype).t()
    out = LoRAConcatGEMM.apply(x2d, xa, base_layer, lora_a, lora_b, scaling,
                               *concat_directions(base_layer.in_features, base_layer.out_features))
    if base_layer.bias is not None:
        out = out + base_layer.bias.to(dtype)
    return out.reshape(*x.shape[:-1], out.shape[-1])
