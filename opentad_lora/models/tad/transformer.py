"""ActionFormer's transformer over time: masked multi-head *conv* attention and the block around it.

The attention first mixes neighbouring steps with a depth-wise convolution for each of q, k and v (each followed by
its own LayerNorm); with ``stride=2`` these convolutions also halve the sequence, which is how the projection builds
its pyramid. Padded steps are never attended to, and outputs at padded steps are zero. The module and parameter
names are OpenTAD's, so its checkpoints load by name.
"""
import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import drop_path
from .blocks import ConvNormAct, layer_norm_channels


class AffineDropPath(nn.Module):
    """Per-channel layer scale (initialised small) followed by stochastic depth of the whole branch, per sample.

    Args:
        channels: Channels of the ``(B, C, T)`` branch output.
        drop_prob: Probability of dropping a sample's branch in training (the same for every block).
        init_scale: Initial value of the scale.
    """

    def __init__(self, channels: int, drop_prob: float = 0.0, init_scale: float = 1e-4) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((1, channels, 1), init_scale))
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(self.scale * x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f'drop_prob={self.drop_prob}'


class MaskedConvAttention(nn.Module):
    """Multi-head self-attention whose q, k, v come from depth-wise convolutions (stride 1 or an even stride).

    ``out[i] = proj(sum_j softmax_j(q_i . k_j / sqrt(d)) v_j)`` over valid keys ``j`` (and ``|i - j| <= window//2``
    when ``window_size > 1``), zero at padded query steps.

    Args:
        channels: Feature width (split over the heads).
        num_heads: Attention heads.
        stride: Downsampling of the convolutions (1 keeps the length).
        window_size: Local attention window (full width); ``<= 1`` attends globally.
        attn_pdrop: Dropout on the attention weights.
        proj_pdrop: Dropout after the output projection.
    """

    def __init__(self, channels: int, num_heads: int, stride: int = 1, window_size: int = -1,
                 attn_pdrop: float = 0.0, proj_pdrop: float = 0.0) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f'channels {channels} must be divisible by num_heads {num_heads}')
        if stride != 1 and stride % 2:
            raise ValueError(f'the attention stride must be 1 or even, got {stride}')
        self.num_heads = num_heads
        self.window_size = window_size
        kernel_size = stride + 1 if stride > 1 else 3
        for name in ('query', 'key', 'value'):
            setattr(self, f'{name}_conv', ConvNormAct(channels, channels, kernel_size, stride, groups=channels,
                                                      with_norm=False, with_act=False, bias=False))
            setattr(self, f'{name}_norm', nn.LayerNorm(channels))
            setattr(self, name, nn.Conv1d(channels, channels, 1))
        self.proj = nn.Conv1d(channels, channels, 1)
        self.attn_drop = nn.Dropout(attn_pdrop)
        self.proj_drop = nn.Dropout(proj_pdrop)

    def _heads(self, x: Tensor) -> Tensor:
        batch, channels, length = x.shape
        return x.view(batch, self.num_heads, channels // self.num_heads, length).transpose(2, 3)

    def forward(self, x: Tensor, mask: Tensor) -> Tuple[Tensor, Tensor]:
        q, q_mask = self.query_conv(x, mask)
        k, kv_mask = self.key_conv(x, mask)
        v, _ = self.value_conv(x, mask)
        q = self._heads(self.query(layer_norm_channels(self.query_norm, q)))
        k = self._heads(self.key(layer_norm_channels(self.key_norm, k)))
        v = self._heads(self.value(layer_norm_channels(self.value_norm, v)))
        logits = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-2, -1)  # (B, heads, Tq, Tk)
        allowed = kv_mask[:, None, None, :]
        if self.window_size > 1:
            steps = torch.arange(logits.shape[-1], device=x.device)
            allowed = allowed & ((steps[:, None] - steps[None, :]).abs() <= self.window_size // 2)
        # a finite fill: a padded query whose window holds no valid key gets uniform (then zeroed) weights, not NaN
        logits = logits.masked_fill(~allowed, torch.finfo(logits.dtype).min)
        weights = F.softmax(logits, dim=-1) * q_mask[:, None, :, None].to(logits.dtype)
        out = self.attn_drop(weights) @ (v * kv_mask[:, None, :, None].to(v.dtype))
        out = out.transpose(2, 3).reshape(x.shape[0], x.shape[1], -1)
        return self.proj_drop(self.proj(out)) * q_mask[:, None].to(out.dtype), q_mask


class ConvTransformerBlock(nn.Module):
    """Pre-LN transformer block on ``(B, C, T)`` with conv attention; ``stride=2`` halves T (max-pooled skip).

    ``y = pool(x) * mask + s1 * attn(LN(x))``, ``out = y + s2 * mlp(LN(y)) * mask``, where ``s1``/``s2`` are
    :class:`AffineDropPath` when ``path_pdrop > 0`` (else 1).

    Args:
        channels: Feature width.
        num_heads: Attention heads.
        stride: 1 or 2 (downsampling block).
        window_size: Local attention window; ``<= 1`` is global.
        proj_pdrop: Dropout in the MLP and after the attention projection.
        path_pdrop: Stochastic depth rate (constant over blocks, as in ActionFormer).
        attn_pdrop: Dropout on the attention weights.
    """

    def __init__(self, channels: int, num_heads: int, stride: int = 1, window_size: int = -1,
                 proj_pdrop: float = 0.0, path_pdrop: float = 0.0, attn_pdrop: float = 0.0) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(channels)
        self.ln2 = nn.LayerNorm(channels)
        self.attn = MaskedConvAttention(channels, num_heads, stride, window_size, attn_pdrop, proj_pdrop)
        self.pool_skip = (nn.MaxPool1d(stride + 1, stride=stride, padding=(stride + 1) // 2) if stride > 1
                          else nn.Identity())
        self.mlp = nn.Sequential(nn.Conv1d(channels, 4 * channels, 1), nn.GELU(), nn.Dropout(proj_pdrop),
                                 nn.Conv1d(4 * channels, channels, 1), nn.Dropout(proj_pdrop))
        if path_pdrop > 0:
            self.drop_path_attn = AffineDropPath(channels, path_pdrop)
            self.drop_path_mlp = AffineDropPath(channels, path_pdrop)
        else:
            self.drop_path_attn = self.drop_path_mlp = nn.Identity()

    def forward(self, x: Tensor, mask: Tensor) -> Tuple[Tensor, Tensor]:
        out, mask = self.attn(layer_norm_channels(self.ln1, x), mask)
        keep = mask[:, None].to(out.dtype)
        out = self.pool_skip(x) * keep + self.drop_path_attn(out)
        out = out + self.drop_path_mlp(self.mlp(layer_norm_channels(self.ln2, out)) * keep)
        return out, mask
