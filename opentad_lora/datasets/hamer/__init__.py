"""FreiHAND-style hand data (JSON + images), its transforms, and synthetic MANO/hand generators."""
from .freihand import FreiHANDDataset, axis_angle_to_rotmats
from .synthetic_hands import write_synthetic_freihand
from .synthetic_mano import build_synthetic_mano, write_synthetic_mano
from .transforms import HandCrop, LoadHandImage, PackHandInputs, crop_affine, rotation_z

__all__ = ['FreiHANDDataset', 'LoadHandImage', 'HandCrop', 'PackHandInputs', 'axis_angle_to_rotmats', 'crop_affine',
           'rotation_z', 'write_synthetic_freihand', 'build_synthetic_mano', 'write_synthetic_mano']
