"""Multi-head self-attention with a fused ``qkv`` projection, computed by PyTorch's SDPA."""
from typing import Callable, Optional

import torch.nn.functional as F
from torch import Tensor, nn

from ...peft import linear_after


class Attention(nn.Module):
    """Self-attention ``proj(softmax(q k^T / sqrt(d)) v)`` with timm's names ``qkv``/``proj`` (``q_norm``/``k_norm``).

    ``F.scaled_dot_product_attention`` picks the flash/memory-efficient kernel where one applies, and the
    single ``qkv`` Linear is one GEMM (and one LoRA target), as in timm, ViTPose and VideoMAE.

    Args:
        dim: Token width; must be divisible by ``num_heads``.
        num_heads: Number of heads.
        qkv_bias: Bias on the ``qkv`` projection.
        qk_norm: Normalise queries and keys per head (``q_norm``/``k_norm``, ViT-22B/DINOv2-style).
        attn_drop: Dropout on the attention weights (training only).
        proj_drop: Dropout after ``proj``.
        norm_layer: Norm class for ``qk_norm``, built as ``norm_layer(head_dim)``.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, qk_norm: bool = False,
                 attn_drop: float = 0.0, proj_drop: float = 0.0,
                 norm_layer: Callable[[int], nn.Module] = nn.LayerNorm) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f'dim {dim} is not divisible by num_heads {num_heads}.')
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None, norm: Optional[nn.Module] = None) -> Tensor:
        """Attend over the tokens of ``norm(x)`` (B, N, C; ``x`` without ``norm``); ``attn_mask`` is SDPA's (bool:
        True = attend, or additive). A LoRA ``qkv`` applies ``norm`` itself (:func:`~opentad_lora.peft.linear_after`)."""
        batch, tokens, channels = x.shape
        qkv = linear_after(self.qkv, norm, x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        x = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale)
        x = x.transpose(1, 2).reshape(batch, tokens, channels)
        return self.proj_drop(self.proj(x))
