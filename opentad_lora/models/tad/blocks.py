"""Masked 1-D building blocks for temporal feature maps ``(B, C, T)`` with a validity mask ``(B, T)``.

The layouts and masking follow OpenTAD's ``ConvModule`` so its checkpoints load by name: a block holds ``conv`` (and
``norm``), the convolution output is zeroed at padded steps *before* the norm, and the activation output again.
"""
from typing import Optional, Tuple

import torch.nn.functional as F
from torch import Tensor, nn

CONV_LN_EPS = 1e-6  # OpenTAD's LayerNorm eps in conv blocks and the neck (the transformer's norms keep 1e-5)


def resample_mask(mask: Tensor, length: int) -> Tensor:
    """A ``(B, T)`` mask resampled to ``length`` steps, nearest neighbour (step ``i`` reads ``floor(i T / length)``)."""
    if mask.shape[-1] == length:
        return mask
    return F.interpolate(mask[:, None].float(), size=length, mode='nearest')[:, 0].bool()


def layer_norm_channels(norm: nn.Module, x: Tensor) -> Tensor:
    """Apply a ``LayerNorm`` (or Identity) over the channels of a ``(B, C, T)`` tensor."""
    return norm(x.transpose(1, 2)).transpose(1, 2)


class ConvNormAct(nn.Module):
    """``Conv1d -> mask -> LayerNorm -> ReLU -> mask``; norm and activation optional ('same' padding).

    A strided convolution resamples the mask to its output length (nearest), so each level keeps its own mask.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Odd kernel size.
        stride: Convolution stride.
        groups: Convolution groups (``in_channels`` for depth-wise).
        with_norm: LayerNorm (eps 1e-6) after the convolution; the convolution then has no bias.
        with_act: ReLU at the end.
        bias: Force the convolution bias on/off (default: only without norm).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, groups: int = 1,
                 with_norm: bool = True, with_act: bool = True, bias: Optional[bool] = None) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f'ConvNormAct needs an odd kernel size, got {kernel_size}')
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2,
                              groups=groups, bias=(not with_norm) if bias is None else bias)
        self.norm = nn.LayerNorm(out_channels, eps=CONV_LN_EPS) if with_norm else None
        self.act = nn.ReLU(inplace=True) if with_act else None

    def forward(self, x: Tensor, mask: Tensor) -> Tuple[Tensor, Tensor]:
        x = self.conv(x)
        mask = resample_mask(mask, x.shape[-1])
        keep = mask[:, None].to(x.dtype)
        x = x * keep
        if self.norm is not None:
            x = layer_norm_channels(self.norm, x)
        if self.act is not None:
            x = self.act(x)
        return x * keep, mask
