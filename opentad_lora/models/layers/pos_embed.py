"""Fixed sin-cos position embeddings (1D/2D/3D) and resizing of learned ones.

Frequencies are the Transformer's ``1 / temperature^(2i/D)``. The 2D layout is MAE's (first half encodes the column,
second half the row, tokens row-major); the 3D layout is MAE-ST's (a quarter of the channels for time, then the 2D
spatial code). ``interleave=True`` gives the sin/cos interleaved table of "Attention is all you need" and VideoMAE.
"""
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def sincos_1d(embed_dim: int, positions: Tensor, temperature: float = 10000.0, interleave: bool = False) -> Tensor:
    """Embed 1D ``positions`` (any shape, flattened) into (N, embed_dim) sin-cos features.

    Args:
        embed_dim: Output width; must be even.
        positions: Positions (need not be integers).
        temperature: Frequency base.
        interleave: ``[sin0, cos0, sin1, cos1, ...]`` instead of ``[sin..., cos...]``.
    """
    if embed_dim % 2:
        raise ValueError(f'sin-cos embedding needs an even width, got {embed_dim}.')
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / temperature ** omega
    angles = positions.reshape(-1).to(torch.float64)[:, None] * omega[None, :]
    if interleave:
        emb = torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)
    else:
        emb = torch.cat([angles.sin(), angles.cos()], dim=1)
    return emb.float()


def sincos_2d(embed_dim: int, grid_size: Sequence[int], temperature: float = 10000.0) -> Tensor:
    """(rows*cols, embed_dim) embedding of a ``grid_size=(rows, cols)`` token grid, rows major (MAE layout)."""
    if embed_dim % 4:
        raise ValueError(f'2D sin-cos embedding needs a width divisible by 4, got {embed_dim}.')
    rows, cols = grid_size
    row, col = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing='ij')
    return torch.cat([sincos_1d(embed_dim // 2, col, temperature), sincos_1d(embed_dim // 2, row, temperature)], dim=1)


def sincos_3d(embed_dim: int, grid_size: Sequence[int], temperature: float = 10000.0) -> Tensor:
    """(T*rows*cols, embed_dim) embedding of a ``grid_size=(T, rows, cols)`` grid, time major (MAE-ST layout).

    The first ``embed_dim // 4`` channels encode time, the rest the 2D position within a frame.
    """
    if embed_dim % 16:
        raise ValueError(f'3D sin-cos embedding needs a width divisible by 16, got {embed_dim}.')
    frames, rows, cols = grid_size
    temporal_dim = embed_dim // 4
    temporal = sincos_1d(temporal_dim, torch.arange(frames), temperature)
    spatial = sincos_2d(embed_dim - temporal_dim, (rows, cols), temperature)
    temporal = temporal[:, None, :].expand(frames, rows * cols, temporal_dim)
    spatial = spatial[None].expand(frames, rows * cols, embed_dim - temporal_dim)
    return torch.cat([temporal, spatial], dim=-1).reshape(frames * rows * cols, embed_dim)


def resize_pos_embed(pos_embed: Tensor, old_grid: Tuple[int, int], new_grid: Tuple[int, int],
                     num_prefix_tokens: int = 0, mode: str = 'bicubic', antialias: bool = False) -> Tensor:
    """Interpolate a learned (1, prefix + rows*cols, C) position embedding to another token grid.

    Prefix tokens (class/register tokens) are kept as they are; the grid part is resampled as an image, which is
    how a checkpoint trained at one resolution is used at another (timm's ``resample_abs_pos_embed``). The call is
    ``F.interpolate(grid, size=new_grid, mode=mode, antialias=antialias, align_corners=False)`` in float32;
    ``antialias=True`` is what DINOv2 inside VGGT uses (torch's anti-aliased bicubic also has another kernel, so
    it differs from the plain one even when upsampling).
    """
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    if grid.shape[1] != old_grid[0] * old_grid[1]:
        raise ValueError(f'pos_embed has {grid.shape[1]} grid tokens, not {old_grid[0]}x{old_grid[1]}.')
    channels = grid.shape[-1]
    grid = grid.reshape(1, old_grid[0], old_grid[1], channels).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=tuple(new_grid), mode=mode, align_corners=False, antialias=antialias)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], channels).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)
