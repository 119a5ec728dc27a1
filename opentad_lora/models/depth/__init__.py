"""VGGT-style multi-view depth: aggregator, DPT depth head and camera head (LoRA through the core), losses."""
from .aggregator import VGGTAggregator
from .camera_head import CameraHead
from .depth_estimator import DepthEstimator
from .dinov2 import DinoV2PatchEmbed
from .dpt_head import DPTHeadLoRA
from .losses import VGGTDepthCameraLoss
from .pose import decode_pose, encode_pose, mat_to_quat, normalize_to_first_frame, quat_to_mat
from .vggt_checkpoint import convert_vggt_state_dict

__all__ = ['VGGTAggregator', 'CameraHead', 'DepthEstimator', 'DinoV2PatchEmbed', 'DPTHeadLoRA',
           'VGGTDepthCameraLoss', 'decode_pose', 'encode_pose', 'mat_to_quat', 'normalize_to_first_frame',
           'quat_to_mat', 'convert_vggt_state_dict']
