"""Temporal action detection (AdaTAD / OpenTAD's ActionFormer): detector, projection, neck, head, losses,
post-processing, and loading OpenTAD-trained detector checkpoints."""
from .assigner import assign_points
from .data_preprocessor import TADDataPreprocessor
from .detector import TADDetector
from .head import ActionFormerHead
from .losses import DIOULoss, FocalLoss, diou_loss_1d, sigmoid_focal_loss
from .neck import FPNIdentity
from .opentad_checkpoint import OpenTADCheckpointHook, convert_opentad_checkpoint, is_opentad_checkpoint
from .point_generator import PointGenerator
from .post_processing import TADPostProcessor, merge_windows, nms, pairwise_tiou, score_voting, soft_nms
from .projection import Conv1DTransformerProj
from .transformer import AffineDropPath, ConvTransformerBlock, MaskedConvAttention

__all__ = [
    'TADDetector', 'TADDataPreprocessor', 'Conv1DTransformerProj', 'FPNIdentity', 'ActionFormerHead',
    'PointGenerator', 'assign_points', 'FocalLoss', 'DIOULoss', 'sigmoid_focal_loss', 'diou_loss_1d',
    'TADPostProcessor', 'merge_windows', 'nms', 'soft_nms', 'score_voting', 'pairwise_tiou',
    'ConvTransformerBlock', 'MaskedConvAttention', 'AffineDropPath',
    'OpenTADCheckpointHook', 'convert_opentad_checkpoint', 'is_opentad_checkpoint',
]
