"""Per-encoder LoRA settings of CLIP: the seed's ``lora`` dict -> one :class:`LoRAConfig` per tower.

Accepted form (ours)::

    lora=dict(enabled=True, r=2, alpha=1, dropout=0.25, use_rslora=True, seed=0,
              vision=dict(target_modules=['q_proj', 'k_proj', 'v_proj']),   # may override r/alpha/... too
              text=dict(target_modules=['q_proj', 'k_proj', 'v_proj']))     # None/absent/[] -> no LoRA there

and the seed's YAML spelling (``lora_alpha``, ``lora_dropout``,
``target_modules=dict(vision_encoder=[...], text_encoder=[...])``). Any other :class:`LoRAConfig` field
(``use_rslora``, ``init``, ``quantize_bits``, ``rank_pattern``...) may be given globally or per tower.
"""
from typing import Any, Dict, Mapping, Optional

from opentad_lora.peft import LoRAConfig

TOWERS = {'vision': 'vision_model', 'text': 'text_model'}  # config key -> module attribute of ViTLoRA
_SEED_TOWERS = {'vision_encoder': 'vision', 'text_encoder': 'text'}
_RENAMES = {'lora_alpha': 'alpha', 'lora_dropout': 'dropout', 'target_modules': 'targets'}
_OWN_KEYS = ('enabled', 'seed', 'vision', 'text', 'target_modules')


def _rename(cfg: Mapping[str, Any], where: str) -> Dict[str, Any]:
    out = {}
    for key, value in cfg.items():
        new = _RENAMES.get(key, key)
        if new in out:
            raise ValueError(f'LoRA config {where} gives both {key!r} and {new!r}.')
        out[new] = value
    return out


def tower_lora_configs(lora: Optional[Mapping[str, Any]]) -> Dict[str, LoRAConfig]:
    """``{'vision': LoRAConfig, 'text': LoRAConfig}`` for the towers that get LoRA (empty when disabled).

    Raises:
        ValueError: for an unknown tower or field (named), or when LoRA is enabled but no tower has targets.
    """
    if not lora or not lora.get('enabled', True):
        return {}
    lora = dict(lora)
    towers: Dict[str, Any] = {}
    seed_targets = lora.get('target_modules')
    if isinstance(seed_targets, Mapping):
        for key, targets in seed_targets.items():
            if key not in _SEED_TOWERS:
                raise ValueError(f'Unknown encoder {key!r} in lora.target_modules; use {sorted(_SEED_TOWERS)}.')
            towers[_SEED_TOWERS[key]] = dict(target_modules=targets)
    elif seed_targets is not None:
        raise ValueError('lora.target_modules must be a dict per encoder (vision_encoder/text_encoder); '
                         'or give lora.vision / lora.text dicts.')
    for name in TOWERS:
        if lora.get(name) is not None:
            if name in towers:
                raise ValueError(f'LoRA targets of the {name} tower are given twice (lora.{name} and '
                                 'lora.target_modules).')
            tower = lora[name]
            towers[name] = dict(target_modules=tower) if isinstance(tower, (list, tuple)) else dict(tower)
    unknown = set(lora) - set(_OWN_KEYS) - set(_RENAMES) - set(LoRAConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f'Unknown keys {sorted(unknown)} in the CLIP lora config.')
    shared = _rename({k: v for k, v in lora.items() if k not in _OWN_KEYS}, 'lora')
    configs = {}
    for name, tower in towers.items():
        tower = _rename(tower, f'lora.{name}')
        if not tower.get('targets'):
            continue
        configs[name] = LoRAConfig.build({**shared, **tower})
    if not configs:
        raise ValueError('LoRA is enabled but no encoder has target modules: set lora.vision.target_modules and/or '
                         'lora.text.target_modules.')
    return configs
