"""Turn a pretrained ViT checkpoint (timm, mmpretrain, ViTPose/HaMeR or ours) into this package's ViT keys.

Layouts handled without a separate converter: a bare state dict or one nested under ``state_dict``/``model``/
``module``; a ``backbone.`` prefix (a classifier or HaMeR checkpoint, of which only the backbone is taken);
mmpretrain's names (``layers.N.ln1``, ``ffn.layers.0.0``, ``patch_embed.projection``, final ``ln1``);
ViTPose's ``last_norm``; a class slot in ``pos_embed`` for a model without class token (folded into every token,
as ViTPose's forward does); and a learned ``pos_embed`` of another grid size (resampled bicubically).
"""
import math
import re
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from torch import Tensor

from ..layers import resize_pos_embed

_WRAPPER_KEYS = ('state_dict', 'model', 'module')
_MMPRETRAIN_RENAMES: Sequence[Tuple[str, str]] = (
    (r'^patch_embed\.projection\.', 'patch_embed.proj.'),
    (r'^layers\.(\d+)\.ln1\.', r'blocks.\1.norm1.'),
    (r'^layers\.(\d+)\.ln2\.', r'blocks.\1.norm2.'),
    (r'^layers\.(\d+)\.ffn\.layers\.0\.0\.', r'blocks.\1.mlp.fc1.'),
    (r'^layers\.(\d+)\.ffn\.layers\.1\.', r'blocks.\1.mlp.fc2.'),
    (r'^layers\.(\d+)\.', r'blocks.\1.'),
    (r'^ln1\.', 'norm.'),
    (r'^last_norm\.', 'norm.'),
)


def extract_state_dict(checkpoint: Mapping[str, Any], prefix: Optional[str] = None) -> Dict[str, Tensor]:
    """The tensors of ``checkpoint`` under ``prefix`` (stripped), unwrapping ``state_dict``/``model``/``module``.

    Args:
        checkpoint: A loaded checkpoint file.
        prefix: Keep only keys starting with it, e.g. ``'backbone.'``. None: use ``'backbone.'`` when some key has
            it, and strip a DDP ``'module.'`` prefix present on every key.
    """
    state = checkpoint
    while True:
        nested = next((state[k] for k in _WRAPPER_KEYS if isinstance(state.get(k), Mapping)), None)
        if nested is None:
            break
        state = nested
    if prefix is None:
        if any(k.startswith('backbone.') for k in state):
            prefix = 'backbone.'
        elif state and all(k.startswith('module.') for k in state):
            prefix = 'module.'
        else:
            prefix = ''
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and isinstance(v, Tensor)}


def rename_vit_keys(state: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """Map mmpretrain/ViTPose key names to timm's (identity on timm keys)."""
    renamed = {}
    for key, value in state.items():
        for pattern, repl in _MMPRETRAIN_RENAMES:
            new_key, count = re.subn(pattern, repl, key)
            if count:
                key = new_key
                break
        renamed[key] = value
    return renamed


def _infer_grid(length: int, num_prefix_tokens: int, grid_size: Tuple[int, int]) -> Tuple[int, int]:
    """Token grid of a (1, length, C) pos_embed: the model's grid if the count fits, else a square one."""
    for prefix in dict.fromkeys((num_prefix_tokens, 0, 1)):
        tokens = length - prefix
        if tokens == grid_size[0] * grid_size[1]:
            return tuple(grid_size)
        side = math.isqrt(max(tokens, 0))
        if side and side * side == tokens:
            return side, side
    raise ValueError(f'Cannot infer the token grid of a pos_embed with {length} positions '
                     f'(model: {num_prefix_tokens} prefix token(s), grid {tuple(grid_size)}).')


def adapt_pos_embed(pos_embed: Tensor, num_prefix_tokens: int, grid_size: Tuple[int, int],
                    source_grid: Optional[Tuple[int, int]] = None) -> Tensor:
    """Fit a checkpoint's learned (1, L, C) ``pos_embed`` to a model with ``num_prefix_tokens`` and ``grid_size``.

    ``source_grid`` is the checkpoint's token grid; None takes the model's grid when the count fits and otherwise
    a square one (every timm/mmpretrain/ViTPose checkpoint at its training resolution). A class slot the model does
    not have is added onto every token, which is exactly what ViTPose/HaMeR's forward computes.
    """
    source_grid = tuple(source_grid or _infer_grid(pos_embed.shape[1], num_prefix_tokens, grid_size))
    source_prefix = pos_embed.shape[1] - source_grid[0] * source_grid[1]
    if source_prefix == 1 and num_prefix_tokens == 0:
        pos_embed = pos_embed[:, 1:] + pos_embed[:, :1]
    elif source_prefix != num_prefix_tokens:
        raise ValueError(f'The checkpoint pos_embed has {source_prefix} prefix slot(s) but the model has '
                         f'{num_prefix_tokens} prefix token(s); check use_cls_token.')
    return resize_pos_embed(pos_embed, source_grid, grid_size, num_prefix_tokens)
