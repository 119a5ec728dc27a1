"""Parameter counts and a per-module table of the LoRA layers in a model."""
from typing import Any, Callable, Dict

from torch import nn

from .inject import count_parameters, iter_lora_layers, saved_module_names
from .quant import quantized_bits


def get_lora_info(model: nn.Module) -> Dict[str, Any]:
    """Trainable/total parameter counts and one row per LoRA layer.

    Returns:
        ``dict(trainable, total, percent, rows, modules_to_save)`` where each row is
        ``dict(name, base_type, shape, adapter, r, alpha, lora_params, quantize_bits, merged)``.
    """
    trainable, total = count_parameters(model)
    rows = []
    for name, layer in iter_lora_layers(model):
        adapter = layer.active_adapter
        if adapter not in layer.lora_A:
            continue
        rows.append(dict(
            name=name, base_type=type(layer.base_layer).__name__,
            shape=(layer.lora_B[adapter].weight.shape[0], layer.lora_A[adapter].weight.shape[1]), adapter=adapter,
            r=layer.r[adapter],
            alpha=layer.lora_alpha[adapter],
            lora_params=layer.lora_A[adapter].weight.numel() + layer.lora_B[adapter].weight.numel(),
            quantize_bits=quantized_bits(layer.base_layer), merged=layer.merged))
    return dict(trainable=trainable, total=total, percent=100.0 * trainable / max(total, 1), rows=rows,
                modules_to_save=saved_module_names(model))


def format_lora_info(info: Dict[str, Any]) -> str:
    """Render ``get_lora_info``'s dict as a fixed-width text table."""
    header = ('module', 'base', 'shape', 'r', 'alpha', 'bits', 'lora params')
    body = [(r['name'], r['base_type'], 'x'.join(map(str, r['shape'])), str(r['r']), f"{r['alpha']:g}",
             str(r['quantize_bits'] or '-'), f"{r['lora_params']:,}") for r in info['rows']]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = ['  '.join(cell.ljust(w) for cell, w in zip(row, widths)) for row in [header, *body]]
    lines.insert(1, '  '.join('-' * w for w in widths))
    if info['modules_to_save']:
        lines.append(f"fully trained: {', '.join(info['modules_to_save'])}")
    lines.append(f"trainable params: {info['trainable']:,} || all params: {info['total']:,} || "
                 f"trainable%: {info['percent']:.4f}")
    return '\n'.join(lines)


def print_lora_info(model: nn.Module, print_fn: Callable[[str], Any] = print) -> str:
    """Print (with ``print_fn``) and return the table of ``get_lora_info(model)``."""
    text = format_lora_info(get_lora_info(model))
    print_fn(text)
    return text
