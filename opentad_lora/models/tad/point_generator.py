"""Anchor points of a temporal feature pyramid, each with the range of action lengths it is responsible for."""
from typing import List, Sequence, Tuple

import torch
from torch import Tensor

from opentad_lora.registry import TASK_UTILS


@TASK_UTILS.register_module()
class PointGenerator:
    """One point per time step of every pyramid level (ActionFormer's anchor-free prior).

    Point ``t`` of level ``l`` sits at ``t * strides[l]`` on the finest grid. It regresses the distances to an
    action's start and end, and is only assigned actions whose larger distance lies in ``regression_range[l]``.

    Args:
        strides: Stride of each level relative to the finest level, e.g. ``[1, 2, 4, 8, 16, 32]``.
        regression_range: ``(low, high)`` per level, in finest-grid units.
    """

    def __init__(self, strides: Sequence[int], regression_range: Sequence[Tuple[float, float]]) -> None:
        if len(strides) != len(regression_range):
            raise ValueError(f'PointGenerator: {len(strides)} strides but {len(regression_range)} regression ranges')
        self.strides = [int(s) for s in strides]
        self.regression_range = [(float(lo), float(hi)) for lo, hi in regression_range]

    @property
    def num_levels(self) -> int:
        return len(self.strides)

    def __call__(self, lengths: Sequence[int], device: torch.device = torch.device('cpu')) -> List[Tensor]:
        """Points of each level as ``(T_l, 4)`` rows ``[position, range_low, range_high, stride]``."""
        if len(lengths) != self.num_levels:
            raise ValueError(f'PointGenerator has {self.num_levels} levels, got {len(lengths)} feature maps')
        points = []
        for length, stride, (low, high) in zip(lengths, self.strides, self.regression_range):
            position = torch.arange(length, device=device, dtype=torch.float32) * stride
            meta = torch.tensor([low, high, stride], device=device, dtype=torch.float32).expand(length, 3)
            points.append(torch.cat([position[:, None], meta], dim=1))
        return points
