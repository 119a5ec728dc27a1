"""The LoRA maths, kept apart from the module bookkeeping so fast paths can replace it.

``lora_linear`` is the one entry point the layers call. This file holds the plain-PyTorch reference path, which
every faster path (fused autograd, Triton) must match in forward and in all gradients.
"""
from typing import Optional

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


def lora_linear(x: Tensor, base_out: Tensor, lora_a: Tensor, lora_b: Tensor, scaling: float,
                dropout_p: float = 0.0, training: bool = False) -> Tensor:
    """Add the low-rank update of one adapter to the base layer's output ``base_out``.

    Args:
        x: Input of the base layer, ``(..., in_features)``.
        base_out: ``base(x)``, ``(..., out_features)``; its dtype is the dtype of the result.
        lora_a: ``(r, in_features)``.
        lora_b: ``(out_features, r)``.
        scaling: ``alpha / r`` (or ``alpha / sqrt(r)``).
        dropout_p: Dropout on the LoRA input only.
        training: Whether dropout is active.
    """
    return base_out + lora_delta(x, lora_a, lora_b, scaling, dropout_p, training).to(base_out.dtype)


def conv_delta_weight(lora_a: Tensor, lora_b: Tensor, scaling: float) -> Tensor:
    """The dense kernel equal to a conv ``A`` (kernel k) followed by a 1x..x1 conv ``B``, times ``scaling``."""
    b = lora_b.flatten(1)  # (out, r)
    return torch.einsum('or,r...->o...', b, lora_a) * scaling


def linear_delta_weight(lora_a: Tensor, lora_b: Tensor, scaling: float,
                        dtype: Optional[torch.dtype] = None) -> Tensor:
    """``B @ A * scaling`` in float32 (exact enough to merge into any dtype), cast to ``dtype`` if given."""
    delta = (lora_b.float() @ lora_a.float()) * scaling
    return delta if dtype is None else delta.to(dtype)
