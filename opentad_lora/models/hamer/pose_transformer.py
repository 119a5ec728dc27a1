"""HaMeR's transformer decoder (self-attention, cross-attention to image tokens, feed-forward; all pre-norm).

Module names follow HaMeR's ``pose_transformer.py`` exactly (``to_qkv``, ``to_q``, ``to_kv``, ``to_out.0``,
``net.0``/``net.3``, ``layers.N.{0,1,2}.{norm,fn}``) so the official checkpoint loads key for key and LoRA targets
read like the seed's list.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _split_heads(x: Tensor, heads: int) -> Tensor:
    batch, tokens, inner = x.shape
    return x.reshape(batch, tokens, heads, inner // heads).transpose(1, 2)


def _attend(q: Tensor, k: Tensor, v: Tensor, heads: int, dropout: float) -> Tensor:
    q, k, v = (_split_heads(t, heads) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
    return out.transpose(1, 2).flatten(2)


class Attention(nn.Module):
    """Multi-head self-attention with a fused bias-free ``to_qkv`` and an output ``to_out = [Linear, Dropout]``."""

    def __init__(self, dim: int, heads: int = 8, dim_head: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.attn_drop = dropout
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        return self.to_out(_attend(q, k, v, self.heads, self.attn_drop if self.training else 0.0))


class CrossAttention(nn.Module):
    """Multi-head attention from the query tokens (``to_q``) to a context (``to_kv``)."""

    def __init__(self, dim: int, context_dim: Optional[int] = None, heads: int = 8, dim_head: int = 64,
                 dropout: float = 0.0) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.attn_drop = dropout
        self.to_kv = nn.Linear(context_dim or dim, inner * 2, bias=False)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        k, v = self.to_kv(context).chunk(2, dim=-1)
        return self.to_out(_attend(self.to_q(x), k, v, self.heads, self.attn_drop if self.training else 0.0))


class FeedForward(nn.Module):
    """``net = [Linear, GELU, Dropout, Linear, Dropout]``."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden_dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden_dim, dim), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class PreNorm(nn.Module):
    """``fn(LayerNorm(x), **kwargs)``."""

    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: Tensor, **kwargs) -> Tensor:
        return self.fn(self.norm(x), **kwargs)


class TransformerCrossAttn(nn.Module):
    """``depth`` layers of ``[PreNorm(Attention), PreNorm(CrossAttention), PreNorm(FeedForward)]`` with residuals."""

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int, dropout: float = 0.0,
                 context_dim: Optional[int] = None) -> None:
        super().__init__()
        self.layers = nn.ModuleList([
            nn.ModuleList([
                PreNorm(dim, Attention(dim, heads, dim_head, dropout)),
                PreNorm(dim, CrossAttention(dim, context_dim, heads, dim_head, dropout)),
                PreNorm(dim, FeedForward(dim, mlp_dim, dropout)),
            ]) for _ in range(depth)])

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        for self_attn, cross_attn, feed_forward in self.layers:
            x = self_attn(x) + x
            x = cross_attn(x, context=context) + x
            x = feed_forward(x) + x
        return x


class TransformerDecoder(nn.Module):
    """Token embedding (``to_token_embedding``), learned ``pos_embedding`` and the cross-attention transformer."""

    def __init__(self, num_tokens: int, token_dim: int, dim: int, depth: int, heads: int, mlp_dim: int,
                 dim_head: int = 64, dropout: float = 0.0, emb_dropout: float = 0.0,
                 context_dim: Optional[int] = None) -> None:
        super().__init__()
        self.to_token_embedding = nn.Linear(token_dim, dim)
        self.pos_embedding = nn.Parameter(torch.randn(1, num_tokens, dim))
        self.dropout = nn.Dropout(emb_dropout)
        self.transformer = TransformerCrossAttn(dim, depth, heads, dim_head, mlp_dim, dropout, context_dim)

    def forward(self, tokens: Tensor, context: Tensor) -> Tensor:
        x = self.dropout(self.to_token_embedding(tokens))
        x = x + self.pos_embedding[:, :x.shape[1]]
        return self.transformer(x, context=context)
