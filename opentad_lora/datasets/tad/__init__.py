"""Temporal action detection data (AdaTAD family): OpenTAD-format annotations, OpenCV video reading, pipelines."""
from .annotations import VideoAnnotation, load_annotations, load_class_map
from .augment import ColorJitter, ImgAug
from .thumos import TADVideoDataset, ThumosPaddingDataset, ThumosSlidingDataset
from .transforms import (CenterCrop, Flip, LoadFrames, PackTADInputs, PrepareVideoInfo, RandomCrop,
                         RandomResizedCrop, Resize, ResizeShortSide, truncate_gt)
from .video_reader import VideoReader

__all__ = [
    'VideoAnnotation', 'load_annotations', 'load_class_map', 'TADVideoDataset', 'ThumosPaddingDataset',
    'ThumosSlidingDataset', 'PrepareVideoInfo', 'LoadFrames', 'ResizeShortSide', 'Resize', 'CenterCrop', 'RandomCrop',
    'RandomResizedCrop', 'Flip', 'ImgAug', 'ColorJitter', 'PackTADInputs', 'truncate_gt', 'VideoReader',
]
