"""Training targets of anchor points: centre sampling, regression ranges, shortest action wins ambiguities."""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def assign_points(points: Tensor, gt_segments: Tensor, gt_labels: Tensor, num_classes: int,
                  center_sample: Optional[str] = 'radius', center_sample_radius: float = 1.5,
                  filter_similar_gt: bool = True) -> Tuple[Tensor, Tensor]:
    """Classification and regression targets of every point for one window (ActionFormer's rule).

    A point is positive for an action when it lies inside the action (``center_sample=None``) or within
    ``radius * stride`` of the action centre and inside the action (``'radius'``), and the larger of its distances
    to the action's boundaries falls in the point's regression range. A point positive for several actions
    regresses the shortest one; the class bits set are those of the actions within 1e-3 of that length
    (``filter_similar_gt=True``) or of every action it is positive for (``False``).

    Args:
        points: ``(P, 4)`` rows ``[position, range_low, range_high, stride]`` of all levels.
        gt_segments: ``(K, 2)`` actions in finest-grid units.
        gt_labels: ``(K,)`` class indices.
        num_classes: Number of classes.
        center_sample: ``'radius'`` or None.
        center_sample_radius: Radius in strides.
        filter_similar_gt: Set only the classes of the (near-)shortest actions.

    Returns:
        ``cls_targets (P, num_classes)`` in {0, 1} and ``reg_targets (P, 2)``: distances to (start, end) divided
        by the point's stride (meaningful only where ``cls_targets`` has a 1).
    """
    num_points = points.shape[0]
    if gt_segments.numel() == 0:
        return points.new_zeros(num_points, num_classes), points.new_zeros(num_points, 2)
    position, range_low, range_high, stride = points[:, :1], points[:, 1:2], points[:, 2:3], points[:, 3:4]
    starts, ends = gt_segments[:, 0][None], gt_segments[:, 1][None]
    left, right = position - starts, ends - position  # (P, K)
    if center_sample == 'radius':
        centre = 0.5 * (starts + ends)
        near_start = torch.maximum(centre - stride * center_sample_radius, starts)
        near_end = torch.minimum(centre + stride * center_sample_radius, ends)
        inside = torch.minimum(position - near_start, near_end - position) > 0
    elif center_sample is None:
        inside = torch.minimum(left, right) > 0
    else:
        raise ValueError(f'center_sample must be "radius" or None, got {center_sample!r}')
    max_distance = torch.maximum(left, right)
    in_range = (max_distance >= range_low) & (max_distance <= range_high)
    lengths = (ends - starts).expand(num_points, -1).masked_fill(~(inside & in_range), float('inf'))
    min_length, min_index = lengths.min(dim=1)
    shortest = torch.isfinite(lengths)
    if filter_similar_gt:
        shortest &= lengths <= min_length[:, None] + 1e-3
    one_hot = F.one_hot(gt_labels.long(), num_classes).to(points.dtype)
    cls_targets = (shortest.to(points.dtype) @ one_hot).clamp(max=1.0)
    rows = torch.arange(num_points, device=points.device)
    reg_targets = torch.stack([left[rows, min_index], right[rows, min_index]], dim=1) / stride
    return cls_targets, reg_targets
