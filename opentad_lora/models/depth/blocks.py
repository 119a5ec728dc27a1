"""VGGT's transformer block: pre-norm attention with QK-norm and RoPE-2D, MLP, LayerScale on both branches."""
from typing import Callable, Optional

import torch.nn.functional as F
from torch import Tensor, nn

from ...peft import linear_after
from ..layers import Attention, DropPath, LayerScale, Mlp
from .rope import RotaryPositionEmbedding2D


class RopeAttention(Attention):
    """:class:`~opentad_lora.models.layers.Attention` that rotates q and k by RoPE-2D after the QK-norm.

    Args:
        rope: The shared rotary embedding, or None for plain attention.
        **kwargs: As :class:`~opentad_lora.models.layers.Attention`.
    """

    def __init__(self, dim: int, rope: Optional[RotaryPositionEmbedding2D] = None, **kwargs) -> None:
        super().__init__(dim, **kwargs)
        self.rope = rope

    def forward(self, x: Tensor, pos: Optional[Tensor] = None, norm: Optional[nn.Module] = None) -> Tensor:
        """Attend over ``norm(x)`` (B, N, C; ``x`` without ``norm``); ``pos`` (B, N, 2) are the RoPE positions."""
        batch, tokens, channels = x.shape
        q, k, v = linear_after(self.qkv, norm, x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None and pos is not None:
            q, k = self.rope(q, pos), self.rope(k, pos)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0,
                                           scale=self.scale)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(batch, tokens, channels)))


class VGGTBlock(nn.Module):
    """``x + ls1(attn(norm1(x), pos))`` then ``x + ls2(mlp(norm2(x)))``, with VGGT's (= timm's) module names.

    Args:
        dim: Token width.
        num_heads: Attention heads.
        mlp_ratio: MLP hidden width as a multiple of ``dim``.
        qkv_bias: Bias on ``attn.qkv``.
        qk_norm: LayerNorm on each head's queries and keys (``attn.q_norm``/``attn.k_norm``).
        init_values: LayerScale init (``ls1.gamma``/``ls2.gamma``); None disables LayerScale.
        rope: Shared RoPE-2D module, or None.
        drop_path: Stochastic-depth probability.
        norm_layer: Norm class, built as ``norm_layer(dim)``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_norm: bool = True, init_values: Optional[float] = 0.01,
                 rope: Optional[RotaryPositionEmbedding2D] = None, drop_path: float = 0.0,
                 norm_layer: Callable[[int], nn.Module] = nn.LayerNorm) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = RopeAttention(dim, rope=rope, num_heads=num_heads, qkv_bias=qkv_bias, qk_norm=qk_norm)
        self.ls1 = LayerScale(dim, init_values) if init_values is not None else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, hidden_features=int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_values) if init_values is not None else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, pos: Optional[Tensor] = None) -> Tensor:
        x = x + self.drop_path(self.ls1(self.attn(x, pos, norm=self.norm1)))  # LoRA layers apply the norms
        return x + self.drop_path(self.ls2(self.mlp(x, norm=self.norm2)))
