"""The FSDP wrap policy keeps LoRA layers whole and isolates trainable leaves; non-float bases are refused early.

Training, saving and resuming under FSDP (two gloo processes) is tested end to end in
tests/test_tools/test_quickstart_tools.py.
"""
import pytest
import torch
from torch import nn

from opentad_lora.engine.fsdp import check_fsdp_dtypes, lora_fsdp_auto_wrap_policy
from opentad_lora.models.backbones.vit import VisionTransformer
from opentad_lora.peft import apply_lora
from opentad_lora.peft.layers import LoRALayer


def _lora_vit(**lora) -> nn.Module:
    model = nn.ModuleDict(dict(
        backbone=VisionTransformer(img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=2),
        head=nn.Linear(32, 3)))
    apply_lora(model, dict(r=4, targets=['qkv', 'fc1'], modules_to_save=['head'], **lora))
    return model


def _units(module: nn.Module, prefix: str = ''):
    """The modules FSDP's recursive wrapping would wrap: it descends where the policy says ``recurse``."""
    for name, child in module.named_children():
        if lora_fsdp_auto_wrap_policy(child, True, 0):
            yield from _units(child, f'{prefix}{name}.')
        if lora_fsdp_auto_wrap_policy(child, False, 0, block_types=['TransformerBlock']):
            yield prefix + name


def test_policy_wraps_blocks_and_trainable_leaves_but_never_splits_a_lora_layer():
    model = _lora_vit()
    wrapped = set(_units(model))
    assert wrapped == {'backbone.blocks.0', 'backbone.blocks.1', 'head'}  # frozen leaves stay in their parents
    for name, module in model.named_modules():
        if isinstance(module, LoRALayer):
            assert not lora_fsdp_auto_wrap_policy(module, True, 0), name  # no descent into a LoRA layer
    assert lora_fsdp_auto_wrap_policy(model['backbone'].blocks[0], True, 0)


def test_non_float_base_is_refused_with_the_fix_named():
    with pytest.raises(ValueError, match="quant_storage='float32'"):
        check_fsdp_dtypes(_lora_vit(quantize_bits=4))
    check_fsdp_dtypes(_lora_vit(quantize_bits=4, quant_storage='float32'))
    check_fsdp_dtypes(_lora_vit())
