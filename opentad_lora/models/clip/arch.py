"""CLIP architecture presets (OpenAI shapes) and their resolution from a config name or dict."""
import copy
from typing import Any, Dict, Mapping, Union

# Shapes of OpenAI's released ViT models (clip/model.py ``build_model`` infers the same from the weights):
# heads = width // 64 on both towers, MLP ratio 4, QuickGELU, LayerNorm eps 1e-5.
_TEXT = dict(context_length=77, vocab_size=49408, width=512, layers=12, heads=8)
CLIP_ARCHS: Dict[str, Dict[str, Any]] = {
    'ViT-B/32': dict(embed_dim=512, vision=dict(image_size=224, patch_size=32, width=768, layers=12, heads=12),
                     text=_TEXT),
    'ViT-B/16': dict(embed_dim=512, vision=dict(image_size=224, patch_size=16, width=768, layers=12, heads=12),
                     text=_TEXT),
    'ViT-L/14': dict(embed_dim=768, vision=dict(image_size=224, patch_size=14, width=1024, layers=24, heads=16),
                     text=dict(_TEXT, width=768, heads=12)),
    # Test/CI size: every code path of the full models, a few thousand weights per tower (+ the token table).
    'tiny': dict(embed_dim=16, vision=dict(image_size=32, patch_size=8, width=32, layers=2, heads=2),
                 text=dict(context_length=16, vocab_size=49408, width=32, layers=2, heads=2)),
}
ALIASES = {'ViT-B-32': 'ViT-B/32', 'ViT-B-16': 'ViT-B/16', 'ViT-L-14': 'ViT-L/14',
           'openai/clip-vit-base-patch32': 'ViT-B/32', 'openai/clip-vit-base-patch16': 'ViT-B/16',
           'openai/clip-vit-large-patch14': 'ViT-L/14'}
_TOWER_DEFAULTS = dict(mlp_ratio=4.0, act='quick_gelu', layer_norm_eps=1e-5)
_REQUIRED = dict(vision=('image_size', 'patch_size', 'width', 'layers', 'heads'),
                 text=('context_length', 'vocab_size', 'width', 'layers', 'heads'))


def _deep_update(base: Dict[str, Any], update: Mapping[str, Any]) -> Dict[str, Any]:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def resolve_arch(arch: Union[str, Mapping[str, Any]]) -> Dict[str, Any]:
    """Full architecture dict from a preset name (``'ViT-B/16'``, HF hub id, ``'tiny'``) or a dict.

    A dict may name a preset under ``base`` and override any field, e.g.
    ``dict(base='tiny', text=dict(vocab_size=600))``; without ``base`` it must give every field.

    Raises:
        ValueError: for an unknown preset or a missing/invalid field (named).
    """
    if isinstance(arch, str):
        arch = dict(base=arch)
    arch = dict(arch)
    name = arch.pop('base', None)
    if name is not None:
        key = ALIASES.get(name, name)
        if key not in CLIP_ARCHS:
            raise ValueError(f'Unknown CLIP architecture {name!r}; choose one of {sorted(CLIP_ARCHS)} '
                             f'(or {sorted(ALIASES)}), or give a full dict.')
        out = _deep_update(copy.deepcopy(CLIP_ARCHS[key]), arch)
    else:
        out = copy.deepcopy(arch)
    if 'embed_dim' not in out:
        raise ValueError('CLIP architecture misses "embed_dim".')
    for tower, fields in _REQUIRED.items():
        cfg = out.get(tower)
        if not isinstance(cfg, Mapping):
            raise ValueError(f'CLIP architecture misses the "{tower}" dict.')
        missing = [f for f in fields if f not in cfg]
        if missing:
            raise ValueError(f'CLIP architecture "{tower}" misses {missing}.')
        out[tower] = {**_TOWER_DEFAULTS, **cfg}
        if out[tower]['width'] % out[tower]['heads']:
            raise ValueError(f'CLIP {tower} width {out[tower]["width"]} is not divisible by heads '
                             f'{out[tower]["heads"]}.')
    if out['vision']['image_size'] % out['vision']['patch_size']:
        raise ValueError(f'CLIP image_size {out["vision"]["image_size"]} is not a multiple of patch_size '
                         f'{out["vision"]["patch_size"]}.')
    return out
