"""Model-agnostic LoRA/QLoRA core. Imports torch, safetensors and (lazily) bitsandbytes only."""
from .config import LoRAConfig
from .info import format_lora_info, get_lora_info, print_lora_info
from .inject import (LoRAReport, apply_lora, count_parameters, iter_lora_layers, mark_modules_to_save,
                     saved_module_names)
from .layers import LoRAConv, LoRALayer, LoRALinear, linear_after
from .quant import dequantize_weight, is_quantized, quantize_linear
from .state import (config_from_peft, disable_adapters, has_lora, load_adapter, lora_state_dict, merge_and_unload,
                    merge_lora, peft_adapter_config, read_adapter, save_adapter, set_adapter, trainable_state_dict,
                    unmerge_lora)
from .targets import name_matches

__all__ = [
    'LoRAConfig', 'LoRAReport', 'LoRALayer', 'LoRALinear', 'LoRAConv', 'linear_after', 'apply_lora', 'count_parameters',
    'iter_lora_layers', 'mark_modules_to_save', 'saved_module_names', 'quantize_linear', 'dequantize_weight',
    'is_quantized', 'lora_state_dict', 'save_adapter', 'load_adapter', 'read_adapter', 'config_from_peft', 'peft_adapter_config',
    'merge_lora', 'unmerge_lora', 'merge_and_unload', 'set_adapter', 'disable_adapters', 'has_lora',
    'trainable_state_dict', 'get_lora_info', 'print_lora_info', 'format_lora_info', 'name_matches',
]
