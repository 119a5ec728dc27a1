"""Registered backbones shared by several families."""
from .vit import VisionTransformer
from .vit_pretrained import adapt_pos_embed, extract_state_dict, rename_vit_keys
from . import vit_adapter  # noqa: F401

__all__ = ['VisionTransformer', 'adapt_pos_embed', 'extract_state_dict', 'rename_vit_keys']
