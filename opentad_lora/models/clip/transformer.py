"""CLIP's pre-norm transformer with HF ``CLIPModel`` module names.

Attention has separate ``q_proj``/``k_proj``/``v_proj``/``out_proj`` Linear layers (HF's layout, and CLIP-LoRA's
split of OpenAI's fused ``in_proj``), so LoRA can target each projection on its own.
"""
from typing import Callable, Dict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import Mlp, checkpoint_call


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``: the GELU approximation OpenAI's CLIP weights were trained with."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


ACTIVATIONS: Dict[str, Callable[[], nn.Module]] = {'quick_gelu': QuickGELU, 'gelu': nn.GELU}


class CLIPAttention(nn.Module):
    """Multi-head self-attention ``out_proj(softmax(q k^T / sqrt(d)) v)`` with separate projections.

    Args:
        width: Token width; divisible by ``heads``.
        heads: Number of heads.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = width // heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: Tensor, causal: bool = False) -> Tensor:
        """Attend over the tokens of ``x`` (B, N, C); ``causal`` lets token i see tokens <= i only (text)."""
        batch, tokens, width = x.shape

        def split(t: Tensor) -> Tensor:
            return t.reshape(batch, tokens, self.heads, self.head_dim).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)),
                                             is_causal=causal)
        return self.out_proj(out.transpose(1, 2).reshape(batch, tokens, width))


class CLIPEncoderLayer(nn.Module):
    """``x + self_attn(layer_norm1(x))`` then ``x + mlp(layer_norm2(x))`` (OpenAI's ``ResidualAttentionBlock``)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, act: str = 'quick_gelu',
                 layer_norm_eps: float = 1e-5) -> None:
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f'Unknown CLIP activation {act!r}; choose one of {sorted(ACTIVATIONS)}.')
        self.layer_norm1 = nn.LayerNorm(width, eps=layer_norm_eps)
        self.self_attn = CLIPAttention(width, heads)
        self.layer_norm2 = nn.LayerNorm(width, eps=layer_norm_eps)
        self.mlp = Mlp(width, int(width * mlp_ratio), act_layer=ACTIVATIONS[act])

    def forward(self, x: Tensor, causal: bool = False) -> Tensor:
        x = x + self.self_attn(self.layer_norm1(x), causal=causal)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    """A stack of :class:`CLIPEncoderLayer` (``layers.N``), optionally with activation checkpointing."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float = 4.0, act: str = 'quick_gelu',
                 layer_norm_eps: float = 1e-5, with_cp: bool = False) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            CLIPEncoderLayer(width, heads, mlp_ratio, act, layer_norm_eps) for _ in range(layers))
        self.with_cp = with_cp

    def forward(self, x: Tensor, causal: bool = False) -> Tensor:
        for layer in self.layers:
            x = checkpoint_call(layer, x, causal=causal, enabled=self.with_cp)
        return x
