"""``LoRAOptimWrapperConstructor``: a few grouped parameter groups, frozen tensors skipped silently.

MMEngine's ``DefaultOptimWrapperConstructor`` with a ``paramwise_cfg`` builds one param group per tensor and logs a
warning per frozen tensor (hundreds for a LoRA ViT); without one it hands frozen tensors to the optimizer. This
constructor assigns every *trainable* parameter an ``(lr, weight_decay)`` from name rules, merges equal settings into
one group, drops ``lr=0`` parameters (they are frozen, not optimised) and logs one table of the groups.
"""
import inspect
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper, OptimWrapperDict
from mmengine.utils.dl_utils.parrots_wrapper import _BatchNorm, _InstanceNorm
from torch import nn

from opentad_lora.registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS, OPTIMIZERS

NORM_TYPES = (_BatchNorm, _InstanceNorm, nn.GroupNorm, nn.LayerNorm)
_PREFIX_KEYS = {'lr', 'weight_decay', 'custom', 'exclude'}
_CUSTOM_KEYS = {'name', 'lr', 'weight_decay'}
_MULT_KEYS = {'lr_mult', 'decay_mult'}


@dataclass
class _Setting:
    """What a rule assigns to a parameter. ``explicit_wd``: the rule named a weight decay, so the default
    no-decay exemption of norms/biases/1-D tensors does not apply. ``lr=None``/``weight_decay=None`` mean the
    optimizer's own default. ``lr_key``: the config key that fixed the lr (None: derived from the optimizer's lr,
    so overriding that lr reaches this parameter)."""

    label: str
    lr: Optional[float]
    weight_decay: Optional[float]
    explicit_wd: bool = False
    extra: Dict[str, Any] = field(default_factory=dict)
    lr_key: Optional[str] = None


_FROZEN = _Setting('frozen', 0.0, None)


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LoRAOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """Build an optim wrapper with grouped param groups for partly frozen (LoRA) models.

    Rules, first match wins, names are full parameter names of the unwrapped model:

    1. OpenTAD's form, verbatim in ``optimizer``: every dict-valued key names a submodule prefix,
       e.g. ``backbone=dict(lr=0, weight_decay=0, custom=[dict(name='adapter', lr=2e-4, weight_decay=0.05)],
       exclude=['x'])``. Within it, names are relative to the prefix: the first ``custom`` entry whose ``name`` is a
       substring gets that entry's lr/wd; otherwise a name containing an ``exclude`` entry is frozen; otherwise the
       prefix's lr/wd. ``paramwise`` is accepted; ``paramwise=False`` (OpenTAD: one plain detector group) also
       decays norms/biases.
    2. MMEngine's ``paramwise_cfg.custom_keys={key: dict(lr_mult=, decay_mult=, ...)}``: the longest key (then
       alphabetical) that is a substring of the name; other keys of the entry are copied into the group.
    3. Everything else: the optimizer's lr/wd, with ``paramwise_cfg`` ``bias_lr_mult``, ``norm_decay_mult``,
       ``bias_decay_mult``, ``dwconv_decay_mult``, ``flat_decay_mult`` as in MMEngine.

    The optimizer's ``lr`` must reach at least one trainable parameter (directly or through ``lr_mult``); when
    every trainable parameter has its lr fixed by a rule, overriding it (``--cfg-options ...optimizer.lr=``) would
    change nothing, so building stops with an error that names the keys that do set the lrs.

    Unless a rule names a weight decay (OpenTAD's ``weight_decay``, ``decay_mult``, a ``*_decay_mult``), norm
    weights, biases and other 1-D tensors get ``weight_decay=0``; ``paramwise_cfg.decay_norm_and_bias=True`` turns
    that off. Parameters with ``lr=0`` (or excluded) get ``requires_grad=False`` and are left out; frozen ones are
    skipped silently. Settings that are equal share one group, whose ``name`` lists the rules that fed it.

    Several optimizers (e.g. generator/discriminator): ``optim_wrapper=dict(constructor='LoRAOptimWrapperConstructor',
    generator=dict(optimizer=dict(...)), discriminator=dict(optimizer=dict(...)))`` gives an ``OptimWrapperDict``.
    Each entry takes the parameters of ``modules=[prefixes]`` if given, else of the submodule named like the key if
    the model has one; at most one entry matching neither takes all the remaining parameters. An entry may carry its
    own ``paramwise_cfg`` (else the shared one applies) and ``type`` (``OptimWrapper``, ``AmpOptimWrapper``, ...).

    Args:
        optim_wrapper_cfg: The ``optim_wrapper`` config without ``constructor``/``paramwise_cfg``.
        paramwise_cfg: MMEngine's ``paramwise_cfg`` plus ``decay_norm_and_bias``.
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: Optional[dict] = None) -> None:
        cfg = dict(optim_wrapper_cfg)
        self.sub_constructors: Dict[str, 'LoRAOptimWrapperConstructor'] = {}
        self.modules: Optional[List[str]] = None  # parameter prefixes this optimizer owns (None: all)
        self.cfg_key = 'optim_wrapper'  # where this optimizer's config sits, for error messages
        self.skip_modules: List[str] = []  # prefixes owned by sibling optimizers
        if 'optimizer' not in cfg:
            self._init_several(cfg, paramwise_cfg)
            return
        optimizer = dict(cfg['optimizer'])
        paramwise = optimizer.pop('paramwise', True)
        self.prefix_rules = {key: self._parse_prefix_rule(key, optimizer.pop(key))
                             for key in [k for k, v in optimizer.items() if isinstance(v, Mapping)]}
        cfg['optimizer'] = optimizer
        super().__init__(cfg, dict(paramwise_cfg) if paramwise_cfg else None)
        unknown = set(self.paramwise_cfg) - {'custom_keys', 'bias_lr_mult', 'bias_decay_mult', 'norm_decay_mult',
                                             'dwconv_decay_mult', 'flat_decay_mult', 'decay_norm_and_bias'}
        if unknown:
            raise ValueError(f'paramwise_cfg has unsupported keys {sorted(unknown)}.')
        self.decay_norm_and_bias = bool(self.paramwise_cfg.get('decay_norm_and_bias', False)) or not paramwise

    def _init_several(self, cfg: Dict[str, Any], paramwise_cfg: Optional[dict]) -> None:
        """One sub-constructor per named optimizer (``OptimWrapperDict``)."""
        if not cfg or not all(isinstance(v, Mapping) and 'optimizer' in v for v in cfg.values()):
            raise ValueError('optim_wrapper needs an "optimizer", or one dict with an "optimizer" per named '
                             f'optimizer; got keys {sorted(cfg)}.')
        for name, sub_cfg in cfg.items():
            sub_cfg = dict(sub_cfg)
            modules = sub_cfg.pop('modules', None)
            sub = LoRAOptimWrapperConstructor(sub_cfg, sub_cfg.pop('paramwise_cfg', paramwise_cfg))
            sub.modules = [modules] if isinstance(modules, str) else (list(modules) if modules else None)
            sub.cfg_key = f'optim_wrapper.{name}'
            self.sub_constructors[name] = sub

    @staticmethod
    def _parse_prefix_rule(prefix: str, rule: Mapping) -> Dict[str, Any]:
        rule = dict(rule)
        unknown = set(rule) - _PREFIX_KEYS
        if unknown:
            raise ValueError(f'optimizer.{prefix} has unknown keys {sorted(unknown)}; allowed: {sorted(_PREFIX_KEYS)}.')
        for i, entry in enumerate(rule.get('custom', [])):
            if 'name' not in entry or set(entry) - _CUSTOM_KEYS:
                raise ValueError(f'optimizer.{prefix}.custom[{i}] must have "name" and only {sorted(_CUSTOM_KEYS)}, '
                                 f'got {dict(entry)}.')
        return rule

    # --- rules -------------------------------------------------------------------------------------------------

    def _prefix_setting(self, name: str) -> Optional[_Setting]:
        for prefix, rule in self.prefix_rules.items():
            if not name.startswith(prefix + '.'):
                continue
            relative = name[len(prefix) + 1:]
            lr = rule.get('lr', self.base_lr)
            wd = rule.get('weight_decay', self.base_wd)
            rule_key = f'{self.cfg_key}.optimizer.{prefix}.lr' if 'lr' in rule else None
            for i, entry in enumerate(rule.get('custom', [])):
                if entry['name'] in relative:
                    entry_key = f'{self.cfg_key}.optimizer.{prefix}.custom[{i}].lr' if 'lr' in entry else rule_key
                    return _Setting(f'{prefix}.custom[{entry["name"]}]', entry.get('lr', lr),
                                    entry.get('weight_decay', wd), 'weight_decay' in entry or 'weight_decay' in rule,
                                    lr_key=entry_key)
            if any(excluded in relative for excluded in rule.get('exclude', [])):
                return _FROZEN
            return _Setting(prefix, lr, wd, 'weight_decay' in rule, lr_key=rule_key)
        return None

    def _custom_key_setting(self, name: str) -> Optional[_Setting]:
        custom_keys = self.paramwise_cfg.get('custom_keys', {})
        for key in sorted(sorted(custom_keys), key=len, reverse=True):
            if key in name:
                options = dict(custom_keys[key])
                lr = None if self.base_lr is None else self.base_lr * options.get('lr_mult', 1.0)
                explicit = 'decay_mult' in options or 'weight_decay' in options
                wd = self.base_wd if 'decay_mult' not in options else self.base_wd * options['decay_mult']
                extra = {k: v for k, v in options.items() if k not in _MULT_KEYS}
                lr, wd = extra.pop('lr', lr), extra.pop('weight_decay', wd)
                lr_key = f'{self.cfg_key}.paramwise_cfg.custom_keys[{key!r}].lr' if 'lr' in options else None
                return _Setting(f'custom_keys[{key}]', lr, wd, explicit, extra, lr_key)
        return None

    def _default_setting(self, short_name: str, module: nn.Module, param: nn.Parameter) -> _Setting:
        cfg, base_wd = self.paramwise_cfg, self.base_wd
        is_norm = isinstance(module, NORM_TYPES)
        lr = self.base_lr
        if short_name == 'bias' and not is_norm and cfg.get('bias_lr_mult') is not None and lr is not None:
            lr = lr * cfg['bias_lr_mult']
        is_dwconv = isinstance(module, nn.Conv2d) and module.in_channels == module.groups
        for applies, key in ((is_norm, 'norm_decay_mult'), (short_name == 'bias', 'bias_decay_mult'),
                             (is_dwconv, 'dwconv_decay_mult'), (param.ndim == 1, 'flat_decay_mult')):
            if applies and cfg.get(key) is not None and base_wd is not None:
                return _Setting(f'base[{key}]', lr, base_wd * cfg[key], True)
        return _Setting('base', lr, base_wd)

    def _setting(self, name: str, short_name: str, module: nn.Module, param: nn.Parameter) -> _Setting:
        setting = (self._prefix_setting(name) or self._custom_key_setting(name)
                   or self._default_setting(short_name, module, param))
        if setting is _FROZEN or setting.explicit_wd or self.decay_norm_and_bias:
            return setting
        if param.ndim <= 1 or short_name == 'bias' or isinstance(module, NORM_TYPES):
            return _Setting(f'{setting.label}.no_decay', setting.lr, 0.0, True, setting.extra, setting.lr_key)
        return setting

    def _check_base_lr_is_used(self, lr_keys: List[Optional[str]]) -> None:
        """Refuse an optimizer ``lr`` that no trainable parameter uses (an override of it would be lost)."""
        if self.base_lr is None or not lr_keys or None in lr_keys:
            return
        keys = sorted(set(lr_keys))
        raise ValueError(f'{self.cfg_key}.optimizer.lr={self.base_lr:g} is the lr of no trainable parameter: every '
                         f'one takes its lr from {", ".join(keys)}. Set the lr there (e.g. with --cfg-options), or '
                         'drop those "lr" entries (or use paramwise_cfg lr_mult) so the parts follow '
                         f'{self.cfg_key}.optimizer.lr.')

    # --- building ----------------------------------------------------------------------------------------------

    def _owns(self, name: str) -> bool:
        def under(prefixes: Sequence[str]) -> bool:
            return any(name == p or name.startswith(p + '.') for p in prefixes)
        return (self.modules is None or under(self.modules)) and not under(self.skip_modules)

    def _named_parameters(self, model: nn.Module) -> Iterator[Tuple[str, str, nn.Module, nn.Parameter]]:
        """``(full name, short name, owner module, param)`` once per tensor (tied weights count once)."""
        seen = set()
        for module_name, module in model.named_modules():
            for short_name, param in module.named_parameters(recurse=False):
                if id(param) not in seen:
                    seen.add(id(param))
                    yield f'{module_name}.{short_name}' if module_name else short_name, short_name, module, param

    def param_groups(self, model: nn.Module, wrapped: bool = False) -> List[Dict[str, Any]]:
        """The grouped param groups for ``model`` (unwrapped); freezes its ``lr=0``/excluded parameters."""
        groups: Dict[str, Dict[str, Any]] = {}
        labels: Dict[str, List[str]] = {}
        lr_keys: List[Optional[str]] = []
        frozen_now = [0, 0]
        for name, short_name, module, param in self._named_parameters(model):
            if not param.requires_grad or not self._owns(name):
                continue
            setting = self._setting(name, short_name, module, param)
            if setting is _FROZEN or setting.lr == 0:
                param.requires_grad_(False)
                frozen_now[0] += 1
                frozen_now[1] += param.numel()
                continue
            key = repr((setting.lr, setting.weight_decay, sorted(setting.extra.items())))
            if key not in groups:
                groups[key] = dict(params=[], **setting.extra)
                if setting.lr is not None:
                    groups[key]['lr'] = setting.lr
                if setting.weight_decay is not None:
                    groups[key]['weight_decay'] = setting.weight_decay
                labels[key] = []
            groups[key]['params'].append(param)
            lr_keys.append(setting.lr_key)
            if setting.label not in labels[key]:
                labels[key].append(setting.label)
        for key, group in groups.items():
            group['name'] = ' + '.join(labels[key])
        if frozen_now[0]:
            level = logging.WARNING if wrapped else logging.INFO
            hint = (' The model is already wrapped (DDP registered them as trainable): freeze them at construction '
                    'or set find_unused_parameters=True.') if wrapped else ''
            print_log(f'LoRAOptimWrapperConstructor froze {frozen_now[0]} tensors ({frozen_now[1]:,} parameters) '
                      f'with lr=0 or listed in exclude.{hint}', logger='current', level=level)
        if not groups:
            raise ValueError(f'No trainable parameters left for the optimizer of {type(model).__name__} '
                             '(all are frozen, excluded or have lr=0).')
        self._check_base_lr_is_used(lr_keys)
        return list(groups.values())

    def __call__(self, model: nn.Module) -> Union[OptimWrapper, OptimWrapperDict]:
        wrapped = is_model_wrapper(model)
        module = model.module if wrapped else model
        if self.sub_constructors:
            return self._build_several(model)
        optimizer_cfg = dict(self.optimizer_cfg)
        optimizer_cls = optimizer_cfg['type']
        if isinstance(optimizer_cls, str):
            with OPTIMIZERS.switch_scope_and_registry(None) as registry:
                optimizer_cls = registry.get(optimizer_cls)
        first_arg = next(iter(inspect.signature(optimizer_cls).parameters))  # 'params' ('model_params': colossalai)
        optimizer_cfg[first_arg] = self.param_groups(module, wrapped)
        optimizer = OPTIMIZERS.build(optimizer_cfg)
        log_param_groups(optimizer, module)
        wrapper_cfg = dict(self.optim_wrapper_cfg)
        wrapper_cfg.setdefault('type', 'OptimWrapper')
        return OPTIM_WRAPPERS.build(wrapper_cfg, default_args=dict(optimizer=optimizer))

    def _build_several(self, model: nn.Module) -> OptimWrapperDict:
        module = model.module if is_model_wrapper(model) else model
        rest = []
        for name, sub in self.sub_constructors.items():
            if sub.modules is None and _has_submodule(module, name):
                sub.modules = [name]
            if sub.modules is None:
                rest.append(name)
        if len(rest) > 1:
            raise ValueError(f'Optimizers {rest} name no submodule of {type(module).__name__} and give no '
                             '"modules"; only one optimizer may take the remaining parameters.')
        owned = [p for sub in self.sub_constructors.values() for p in (sub.modules or [])]
        for name in rest:
            self.sub_constructors[name].skip_modules = owned
        wrappers = {}
        for name, sub in self.sub_constructors.items():
            print_log(f'Optimizer {name!r}:', logger='current')
            wrappers[name] = sub(model)
        optimised = {id(p) for w in wrappers.values() for g in w.optimizer.param_groups for p in g['params']}
        orphans = [n for n, p in module.named_parameters() if p.requires_grad and id(p) not in optimised]
        if orphans:
            print_log(f'{len(orphans)} trainable tensors belong to no optimizer ({", ".join(orphans[:5])}'
                      f'{", ..." if len(orphans) > 5 else ""}); list their modules in some "modules".',
                      logger='current', level=logging.WARNING)
        return OptimWrapperDict(**wrappers)


def _has_submodule(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False


def format_param_groups(optimizer: torch.optim.Optimizer, model: Optional[nn.Module] = None) -> str:
    """A table of the optimizer's param groups: name, #tensors, #params, lr, weight decay."""
    rows = [('group', '#tensors', '#params', 'lr', 'weight_decay')]
    for i, group in enumerate(optimizer.param_groups):
        rows.append((str(group.get('name', i)), str(len(group['params'])),
                     f'{sum(p.numel() for p in group["params"]):,}', f'{group["lr"]:.3g}',
                     f'{group.get("weight_decay", 0):.3g}'))
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = ['  '.join(cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    header = f'{type(optimizer).__name__} param groups'
    if model is not None:
        frozen = [p for p in model.parameters() if not p.requires_grad]
        header += f' (frozen and skipped: {len(frozen)} tensors, {sum(p.numel() for p in frozen):,} parameters)'
    return '\n'.join([header + ':'] + lines)


def log_param_groups(optimizer: torch.optim.Optimizer, model: Optional[nn.Module] = None) -> None:
    """Log :func:`format_param_groups` once through MMEngine's current logger."""
    print_log(format_param_groups(optimizer, model), logger='current')
