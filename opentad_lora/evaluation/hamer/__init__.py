"""Hand-mesh metrics (FreiHAND protocol): PA-MPJPE, PA-MPVPE, F@5mm, F@15mm."""
from .functional import f_score, mean_point_error, pa_error, procrustes_align, procrustes_transform
from .hand_mesh_metric import HandMeshMetric

__all__ = ['HandMeshMetric', 'procrustes_transform', 'procrustes_align', 'pa_error', 'mean_point_error', 'f_score']
