"""``apply_lora``: wrap the modules a ``LoRAConfig`` selects, optionally quantize their bases, and freeze the rest.

The whole plan is checked before the model is touched, so a bad config raises and leaves the model as it was.
"""
import collections
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Tuple, Union

from torch import nn

from .config import LoRAConfig
from .layers import LoRAConv, LoRALayer, LoRALinear, lora_layer_class
from .quant import is_quantized, quantize_linear
from .targets import closest_names, first_match

SAVE_FLAG = '_lora_modules_to_save'  # attribute set on a module trained in full and saved with the adapter
CONFIGS_ATTR = '_lora_configs'  # {adapter_name: LoRAConfig} on the module apply_lora was called with


@dataclass
class LoRAReport:
    """What ``apply_lora`` did.

    Attributes:
        adapter_name: Name of the adapter that was added.
        wrapped: ``{module name: dict(type, r, alpha, quantize_bits)}`` for every wrapped module.
        modules_to_save: Names of modules left fully trainable.
        trainable: Number of trainable parameters of the model after the call.
        total: Number of parameters (quantized weights counted by their logical size).
    """

    adapter_name: str
    wrapped: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    modules_to_save: List[str] = field(default_factory=list)
    trainable: int = 0
    total: int = 0

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / max(self.total, 1)

    def __str__(self) -> str:
        return (f'LoRA adapter {self.adapter_name!r}: wrapped {len(self.wrapped)} modules, '
                f'trainable {self.trainable:,} / {self.total:,} parameters ({self.percent:.3f}%)')


def iter_candidate_modules(model: nn.Module, prefix: str = '') -> Iterator[Tuple[str, nn.Module]]:
    """Named modules of ``model``, without descending into existing LoRA layers (their base and A/B)."""
    for name, child in model.named_children():
        full = f'{prefix}.{name}' if prefix else name
        yield full, child
        if not isinstance(child, LoRALayer):
            yield from iter_candidate_modules(child, full)


def iter_lora_layers(model: nn.Module) -> Iterator[Tuple[str, LoRALayer]]:
    """``(name, layer)`` for every LoRA layer inside ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, LoRALayer):
            yield name, module


def count_parameters(model: nn.Module) -> Tuple[int, int]:
    """``(trainable, total)`` parameter counts; 4-bit packed weights count as their unpacked size."""
    trainable = total = 0
    for param in model.parameters():
        quant_state = getattr(param, 'quant_state', None)
        numel = int(quant_state.shape.numel()) if quant_state is not None else param.numel()
        total += numel
        if param.requires_grad:
            trainable += numel
    return trainable, total


def _plan(model: nn.Module, cfg: LoRAConfig) -> Tuple[List[Tuple[str, nn.Module, int, float]], List[str]]:
    """Resolve the targets of ``cfg`` in ``model``; raise one ValueError listing every problem."""
    candidates = list(iter_candidate_modules(model))
    names = [name for name, _ in candidates]
    errors, plan, hits_per_pattern = [], [], {p: 0 for p in cfg.targets}
    for name, module in candidates:
        pattern = first_match(name, cfg.targets)
        if pattern is None or first_match(name, cfg.exclude) is not None:
            continue
        hits_per_pattern[pattern] += 1
        if isinstance(module, LoRALayer):
            base = module.base_layer
        else:
            base = module
        if lora_layer_class(base) is None:
            errors.append(f'target {pattern!r} selects {name!r} of type {type(base).__name__}, which LoRA cannot '
                          'wrap (supported: nn.Linear, nn.Conv1d/2d/3d, bitsandbytes Linear4bit/Linear8bitLt)')
            continue
        if lora_layer_class(base) is LoRAConv and base.groups != 1:
            errors.append(f'target {pattern!r} selects {name!r}, a grouped convolution (groups={base.groups}), '
                          'which LoRA does not support')
            continue
        rank_key = first_match(name, cfg.rank_pattern)
        alpha_key = first_match(name, cfg.alpha_pattern)
        plan.append((name, module, cfg.rank_pattern[rank_key] if rank_key else cfg.r,
                     cfg.alpha_pattern[alpha_key] if alpha_key else cfg.alpha))
    for pattern, hits in hits_per_pattern.items():
        if hits == 0:
            errors.append(f'target {pattern!r} matches no module; closest names: {closest_names(pattern, names)}')
    save_names, save_errors = _resolve_modules_to_save(names, cfg.modules_to_save)
    errors += save_errors
    if errors:
        raise ValueError(f'Invalid LoRA config for {type(model).__name__}:\n  - ' + '\n  - '.join(errors))
    return plan, save_names


def _resolve_modules_to_save(names: List[str], patterns: List[str]) -> Tuple[List[str], List[str]]:
    """Module names selected by ``patterns``, and one error line per pattern that selects nothing."""
    found, errors = [], []
    for pattern in patterns:
        hits = [name for name in names if first_match(name, [pattern])]
        if not hits:
            errors.append(f'modules_to_save {pattern!r} matches no module; '
                          f'closest names: {closest_names(pattern, names)}')
        found += [name for name in hits if name not in found]
    return found, errors


def mark_modules_to_save(model: nn.Module, patterns: List[str]) -> List[str]:
    """Train the modules selected by ``patterns`` in full and save them with every adapter (PEFT's
    ``modules_to_save``), in place; for modules outside the part ``apply_lora`` was called on (a detector head, an
    adapter added by a model family).

    Returns:
        The names of the marked modules.

    Raises:
        ValueError: before any change, if a pattern selects no module (the closest names are listed).
    """
    names = [name for name, _ in iter_candidate_modules(model)]
    found, errors = _resolve_modules_to_save(names, list(patterns))
    if errors:
        raise ValueError(f'Invalid modules_to_save for {type(model).__name__}:\n  - ' + '\n  - '.join(errors))
    _mark_saved(model, found)
    return found


def saved_module_names(model: nn.Module) -> List[str]:
    """Names of the modules of ``model`` that are trained in full and saved with the adapters."""
    return [name for name, module in model.named_modules() if getattr(module, SAVE_FLAG, False)]


def _mark_saved(model: nn.Module, names: List[str]) -> None:
    for name in names:
        submodule = model.get_submodule(name)
        setattr(submodule, SAVE_FLAG, True)
        submodule.requires_grad_(True)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition('.')
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, module)


def apply_lora(model: nn.Module, cfg: Union[LoRAConfig, Mapping[str, Any]],
               adapter_name: str = 'default') -> LoRAReport:
    """Add the LoRA adapter ``adapter_name`` to ``model`` in place, as ``cfg`` describes.

    Every selected module becomes a :class:`LoRALinear` / :class:`LoRAConv` (or gains a new adapter if it already is
    one). With ``quantize_bits`` the frozen base of each selected ``nn.Linear`` becomes a bitsandbytes layer; with
    ``base_dtype`` each selected float base is stored in that dtype. Then
    every parameter of ``model`` is frozen except the active adapters' A/B and the ``modules_to_save``.

    Args:
        model: The model to modify in place; load its pretrained weights *before* this call.
        cfg: A :class:`LoRAConfig` or a dict of its fields.
        adapter_name: Name of the new adapter (PEFT's ``'default'`` unless several are wanted).

    Returns:
        A :class:`LoRAReport` with the wrapped names and the parameter counts.

    Raises:
        ValueError: before any change, if a field is invalid or a pattern selects nothing or an unsupported module.
    """
    cfg = LoRAConfig.build(cfg)
    plan, save_names = _plan(model, cfg)
    report = LoRAReport(adapter_name=adapter_name)
    active = next((layer.active_adapter for _, layer in iter_lora_layers(model)), None)
    compute_dtype, base_dtype = cfg.torch_compute_dtype, cfg.torch_base_dtype
    pending = collections.deque(plan)  # popped as they are wrapped: a replaced float layer is freed at once
    del plan
    while pending:
        name, module, rank, alpha = pending.popleft()
        if not isinstance(module, LoRALayer):
            base = module
            if cfg.quantize_bits and lora_layer_class(base) is not LoRAConv and not is_quantized(base):
                base = quantize_linear(base, cfg.quantize_bits, cfg.quant_type, cfg.double_quant, compute_dtype,
                                       cfg.torch_quant_storage)
            elif base_dtype is not None and not is_quantized(base):
                base = base.to(base_dtype)  # weight and bias, in place
            module = lora_layer_class(base)(base)
            _set_submodule(model, name, module)
        module.update_layer(adapter_name, rank, alpha, cfg.dropout, cfg.use_rslora, cfg.init)
        if isinstance(module, LoRALinear):
            module.keep_dequantized = cfg.keep_dequantized
            module.recompute_input = cfg.recompute_inputs
        report.wrapped[name] = dict(type=type(module.base_layer).__name__, r=rank, alpha=alpha,
                                    quantize_bits=cfg.quantize_bits if is_quantized(module.base_layer) else None)
    for param in model.parameters():
        param.requires_grad_(False)
    for _, layer in iter_lora_layers(model):  # an added adapter stays inactive until set_adapter (as in PEFT)
        layer.set_adapter(active or adapter_name)
    _mark_saved(model, save_names)
    report.modules_to_save = save_names
    configs = getattr(model, CONFIGS_ATTR, None) or {}
    configs[adapter_name] = cfg
    object.__setattr__(model, CONFIGS_ATTR, configs)
    report.trainable, report.total = count_parameters(model)
    return report
