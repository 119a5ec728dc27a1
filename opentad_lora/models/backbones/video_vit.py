"""VideoMAE's building blocks: tubelet embedding, attention with separate q/v biases, the block, the position table.

Module names follow VideoMAE / VideoMAE-v2 (``patch_embed.proj``, ``blocks.N.attn.qkv``, ``attn.q_bias``,
``attn.v_bias``, ``attn.proj``, ``mlp.fc1``, ``mlp.fc2``), so their checkpoints map onto ours almost key for key and
the LoRA targets are ``qkv``/``proj``/``fc1``/``fc2``.
"""
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...peft import linear_after
from ..layers import Attention, TransformerBlock, sincos_1d

# VideoMAE (S/B/L/H) and VideoMAE-v2 (g) encoder sizes.
ARCHS: Dict[str, Dict[str, float]] = {
    'small': dict(embed_dims=384, depth=12, num_heads=6, mlp_ratio=4, patch_size=16),
    'base': dict(embed_dims=768, depth=12, num_heads=12, mlp_ratio=4, patch_size=16),
    'large': dict(embed_dims=1024, depth=24, num_heads=16, mlp_ratio=4, patch_size=16),
    'huge': dict(embed_dims=1280, depth=32, num_heads=16, mlp_ratio=4, patch_size=16),
    'giant': dict(embed_dims=1408, depth=40, num_heads=16, mlp_ratio=48 / 11, patch_size=14),
}


def videomae_sincos_table(num_tokens: int, embed_dims: int) -> Tensor:
    """VideoMAE's fixed position table (1, num_tokens, C): interleaved sin/cos of the *flattened* token index.

    VideoMAE numbers the (time, row, col) tokens of a 16-frame clip 0..N-1 and embeds that 1D index; it is not a
    factorised 3D code. Pretrained VideoMAE weights expect exactly this table.
    """
    return sincos_1d(embed_dims, torch.arange(num_tokens), interleave=True).unsqueeze(0)


def resize_video_pos_embed(pos_embed: Tensor, steps: int, old_grid: Tuple[int, int],
                           new_grid: Tuple[int, int]) -> Tensor:
    """Resample a (1, steps*rows*cols, C) table to another spatial grid, each time step as an image (bicubic).

    This is how OpenTAD runs VideoMAE (pretrained at 224², a 14x14 grid) on 160² frames (a 10x10 grid).
    """
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    channels = pos_embed.shape[-1]
    table = pos_embed.reshape(steps, old_grid[0], old_grid[1], channels).permute(0, 3, 1, 2).float()
    table = F.interpolate(table, size=tuple(new_grid), mode='bicubic', align_corners=False)
    return table.permute(0, 2, 3, 1).reshape(1, -1, channels).to(pos_embed.dtype)


class TubeletEmbed(nn.Module):
    """Video to tokens with a Conv3d whose kernel = stride = (tubelet, patch, patch); returns (B, C, T', h, w)."""

    def __init__(self, in_chans: int, embed_dims: int, patch_size: int, tubelet_size: int) -> None:
        super().__init__()
        kernel = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dims, kernel_size=kernel, stride=kernel)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class VideoMAEAttention(Attention):
    """Self-attention whose ``qkv`` Linear has no bias; learned ``q_bias`` and ``v_bias`` are added after it.

    The key bias is fixed at zero (VideoMAE/BEiT). The biases are added to the *output* of ``self.qkv(x)`` rather
    than passed to ``F.linear(x, qkv.weight, bias)`` as VideoMAE does, so ``qkv`` may be a LoRA or a bitsandbytes
    4/8-bit layer.

    Args:
        dim: Token width.
        num_heads: Number of heads.
        qkv_bias: Whether ``q_bias``/``v_bias`` exist.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__(dim, num_heads=num_heads, qkv_bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.v_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None, norm: Optional[nn.Module] = None) -> Tensor:
        batch, tokens, channels = x.shape
        qkv = linear_after(self.qkv, norm, x)
        if self.q_bias is not None:
            qkv = qkv + torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias]).to(qkv.dtype)
        q, k, v = qkv.reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(batch, tokens, channels)))


class VideoMAEBlock(TransformerBlock):
    """A pre-norm ViT block with VideoMAE's attention, followed by an optional AdaTAD adapter (``adapter``).

    Args:
        dim: Token width.
        num_heads: Attention heads.
        mlp_ratio: MLP hidden width as a multiple of ``dim``.
        qkv_bias: Learned q/v biases.
        drop_path: Stochastic-depth rate of both residual branches.
        init_values: LayerScale init (VideoMAE's ``init_values``/``gamma_1``); None disables it.
        norm_layer: Norm class, built as ``norm_layer(dim)``.
        adapter: Module run on the block output as ``adapter(x, grid)``, or None.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, drop_path: float,
                 init_values: Optional[float], norm_layer: Callable[[int], nn.Module],
                 adapter: Optional[nn.Module] = None) -> None:
        super().__init__(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=False, init_values=init_values,
                         drop_path=drop_path, norm_layer=norm_layer)
        self.attn = VideoMAEAttention(dim, num_heads, qkv_bias)
        self.adapter = adapter

    def forward(self, x: Tensor, grid: Tuple[int, int, int]) -> Tensor:
        """Tokens (videos * chunks, chunk_steps * rows * cols, C); ``grid`` = (window_steps, rows, cols)."""
        x = super().forward(x)
        return x if self.adapter is None else self.adapter(x, grid)
