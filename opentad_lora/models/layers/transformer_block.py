"""Pre-norm transformer block with timm's names (``norm1``, ``attn``, ``ls1``, ``norm2``, ``mlp``, ``ls2``)."""
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from .attention import Attention
from .drop_path import DropPath
from .mlp import Mlp


class LayerScale(nn.Module):
    """Per-channel learnable residual scale ``x * gamma`` (CaiT, DINOv2), initialised to ``init_values``."""

    def __init__(self, dim: int, init_values: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim, ), float(init_values)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class TransformerBlock(nn.Module):
    """``x + drop_path(ls1(attn(norm1(x))))`` then ``x + drop_path(ls2(mlp(norm2(x))))``.

    Args:
        dim: Token width.
        num_heads: Attention heads.
        mlp_ratio: MLP hidden width as a multiple of ``dim``.
        qkv_bias: Bias on the fused ``qkv`` projection.
        qk_norm: Per-head query/key normalisation.
        proj_drop: Dropout after the attention and MLP projections.
        attn_drop: Dropout on the attention weights.
        init_values: LayerScale init; None disables LayerScale (``ls1``/``ls2`` are identities).
        drop_path: Stochastic-depth probability of both residual branches.
        act_layer: MLP activation class.
        norm_layer: Norm class, built as ``norm_layer(dim)``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_norm: bool = False, proj_drop: float = 0.0, attn_drop: float = 0.0,
                 init_values: Optional[float] = None, drop_path: float = 0.0,
                 act_layer: Callable[[], nn.Module] = nn.GELU,
                 norm_layer: Callable[[int], nn.Module] = nn.LayerNorm) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, qk_norm=qk_norm, attn_drop=attn_drop,
                              proj_drop=proj_drop, norm_layer=norm_layer)
        self.ls1 = LayerScale(dim, init_values) if init_values is not None else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.ls2 = LayerScale(dim, init_values) if init_values is not None else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
        # The norms are handed to attn/mlp so that LoRA layers can apply them (and keep no copy of their output).
        x = x + self.drop_path1(self.ls1(self.attn(x, attn_mask=attn_mask, norm=self.norm1)))
        return x + self.drop_path2(self.ls2(self.mlp(x, norm=self.norm2)))
