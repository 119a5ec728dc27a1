"""Depth metrics (AbsRel, δ<1.25 after least-squares or median alignment); pure maths in ``functional``."""
from .depth_metric import DepthMetric
from .functional import (align_depth, compute_depth_metrics, depth_error_metrics, least_squares_scale_shift,
                         median_scale, valid_depth_mask)

__all__ = ['DepthMetric', 'align_depth', 'compute_depth_metrics', 'depth_error_metrics', 'least_squares_scale_shift',
           'median_scale', 'valid_depth_mask']
