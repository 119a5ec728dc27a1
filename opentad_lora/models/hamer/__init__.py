"""HaMeR-LoRA: ViT backbone + MANO transformer head + HMR discriminator, MANO layer and checkpoint loading."""
from .checkpoint import convert_hamer_state_dict, load_hamer_checkpoint, read_hamer_checkpoint, to_hamer_state_dict
from .discriminator import HaMeRDiscriminator
from .geometry import (aa_to_rotmat, cam_crop_to_full, cam_to_translation, perspective_projection,
                       rot6d_to_rotmat)
from .hamer_lora import HAMER_LOSS_WEIGHTS, LORA_PARTS, HaMeRLoRA, apply_part_lora
from .mano_head import MANOTransformerDecoderHead
from .mano_io import load_mano_model, read_mano_pickle
from .mano_layer import MANO_TIP_VERTEX_IDS, MANO_TO_OPENPOSE, MANOLayer

__all__ = [
    'HaMeRLoRA', 'MANOTransformerDecoderHead', 'HaMeRDiscriminator', 'MANOLayer', 'apply_part_lora',
    'load_hamer_checkpoint', 'convert_hamer_state_dict', 'read_hamer_checkpoint', 'to_hamer_state_dict',
    'load_mano_model', 'read_mano_pickle', 'rot6d_to_rotmat', 'aa_to_rotmat', 'perspective_projection', 'cam_to_translation',
    'cam_crop_to_full', 'HAMER_LOSS_WEIGHTS', 'LORA_PARTS', 'MANO_TIP_VERTEX_IDS', 'MANO_TO_OPENPOSE',
]
