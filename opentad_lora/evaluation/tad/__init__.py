"""Temporal action detection metrics (AdaTAD family), with OpenTAD's evaluation rules."""
from .functional import (Detection, average_precision_detection, interpolated_average_precision,
                         mean_average_precision, segment_iou)
from .ground_truth import GroundTruthInstance, clean_instances, load_ground_truth
from .tad_metric import TADmAPMetric, dump_result_file, format_map_table, load_result_file

__all__ = ['TADmAPMetric', 'format_map_table', 'dump_result_file', 'load_result_file', 'Detection',
           'GroundTruthInstance', 'clean_instances', 'load_ground_truth', 'average_precision_detection',
           'interpolated_average_precision', 'mean_average_precision', 'segment_iou']
