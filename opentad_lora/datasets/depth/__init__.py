"""Multi-view depth data: COLMAP text/binary models, ETH3D-style scenes, synthetic scene rendering."""
from .colmap import Camera, ColmapModel, Image, Point3D, read_model
from .colmap_writer import write_model
from .multiview_dataset import COLMAPMultiViewDataset

__all__ = ['Camera', 'ColmapModel', 'Image', 'Point3D', 'read_model', 'write_model', 'COLMAPMultiViewDataset']
