"""CAD-Recode data: (point cloud, CadQuery program) pairs, their pipeline, tokenisation and a synthetic generator."""
from .convert import programs_to_dataset
from .dataset import CADRecodeDataset
from .geometry import farthest_point_sampling, fit_to_cube
from .io import read_mesh, read_points, write_mesh, write_points
from .synthetic import SHAPE_MAKERS, SyntheticShape, random_shape, write_synthetic_dataset
from opentad_lora.models.cad.tokenization import CADCodeTokenizer, train_code_tokenizer
from .transforms import (POINT_RECIPES, LoadCADCode, LoadCADPointCloud, PackCADInputs, PointCloudNoise,
                         TokenizeCADCode)

__all__ = ['CADRecodeDataset', 'CADCodeTokenizer', 'POINT_RECIPES', 'LoadCADPointCloud', 'PointCloudNoise',
           'LoadCADCode', 'TokenizeCADCode', 'PackCADInputs', 'SHAPE_MAKERS', 'SyntheticShape', 'random_shape',
           'write_synthetic_dataset', 'programs_to_dataset', 'train_code_tokenizer', 'farthest_point_sampling',
           'fit_to_cube', 'read_points', 'write_points', 'read_mesh', 'write_mesh']
