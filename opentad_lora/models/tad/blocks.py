"""Masked 1-D building blocks for temporal feature maps ``(B, C, T)`` with a validity mask ``(B, T)``."""
from typing import Tuple

import torch.nn.functional as F
from torch import Tensor, nn


class MaskedConv1d(nn.Conv1d):
    """``Conv1d`` with 'same' padding whose output is zeroed at padded (invalid) time steps.

    With ``stride > 1`` the mask is subsampled the same way, so each level keeps its own mask.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 bias: bool = True, groups: int = 1) -> None:
        if kernel_size % 2 != 1:
            raise ValueError(f'MaskedConv1d needs an odd kernel size, got {kernel_size}')
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2,
                         bias=bias, groups=groups)

    def forward(self, x: Tensor, mask: Tensor) -> Tuple[Tensor, Tensor]:  # type: ignore[override]
        out = super().forward(x)
        if self.stride[0] > 1:
            mask = mask[:, ::self.stride[0]][:, :out.shape[-1]]
        return out * mask[:, None].to(out.dtype), mask


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel axis of a ``(B, C, T)`` tensor."""

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x.transpose(1, 2), self.normalized_shape, self.weight, self.bias,
                            self.eps).transpose(1, 2)


class ConvNormAct(nn.Module):
    """``MaskedConv1d -> ChannelLayerNorm -> ReLU``, re-masked: ActionFormer's embedding and head-tower layers."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, with_norm: bool = True) -> None:
        super().__init__()
        self.conv = MaskedConv1d(in_channels, out_channels, kernel_size, bias=not with_norm)
        self.norm = ChannelLayerNorm(out_channels) if with_norm else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor, mask: Tensor) -> Tuple[Tensor, Tensor]:
        x, mask = self.conv(x, mask)
        return self.act(self.norm(x)) * mask[:, None].to(x.dtype), mask
