"""Generic transformer building blocks shared by every model family (timm-compatible module names)."""
from .attention import Attention
from .checkpoint import checkpoint_call, checkpoint_seq
from .drop_path import DropPath, drop_path, drop_path_rates
from .mlp import Mlp
from .patch_embed import PatchEmbed, to_2tuple
from .pos_embed import resize_pos_embed, sincos_1d, sincos_2d, sincos_3d
from .transformer_block import LayerScale, TransformerBlock

__all__ = [
    'Attention', 'checkpoint_call', 'checkpoint_seq', 'DropPath', 'drop_path', 'drop_path_rates', 'Mlp',
    'PatchEmbed', 'to_2tuple', 'resize_pos_embed', 'sincos_1d', 'sincos_2d', 'sincos_3d', 'LayerScale',
    'TransformerBlock',
]
