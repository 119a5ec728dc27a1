"""Temporal action detection metrics (AdaTAD family)."""
from .functional import (average_precision_detection, interpolated_average_precision, mean_average_precision,
                         segment_iou)
from .tad_metric import TADmAPMetric, format_map_table

__all__ = ['TADmAPMetric', 'format_map_table', 'average_precision_detection', 'interpolated_average_precision',
           'mean_average_precision', 'segment_iou']
