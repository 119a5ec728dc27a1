"""CAD-Recode evaluation: sandboxed execution of generated CadQuery code, Chamfer distance, IoU, invalidity ratio."""
from .functional import chamfer_distance, mesh_chamfer_distance, normalize_mesh, sample_surface, volumetric_iou
from .metric import CADMetric
from .sandbox import CodeSandbox, ExecutionResult, run_code

__all__ = ['CADMetric', 'CodeSandbox', 'ExecutionResult', 'run_code', 'chamfer_distance', 'mesh_chamfer_distance',
           'normalize_mesh', 'sample_surface', 'volumetric_iou']
