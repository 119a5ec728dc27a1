"""``dequantize_weight``: bit for bit bitsandbytes' dequantization cast to the requested dtype, in few ops.

It runs twice per QLoRA layer and step (forward and backward) and eager steps are host-bound, so the number of ops
it dispatches is part of its contract, next to its exact numbers.
"""
import itertools

import bitsandbytes as bnb
import pytest
import torch
from torch import nn

from opentad_lora.peft import dequantize_weight, quantize_linear

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# a whole number of 64-blocks; a last partial block; an odd row length (bitsandbytes' generic CPU path)
SHAPES = ((48, 64), (20, 30), (7, 9))


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    """The bit patterns of a float tensor (so that -0.0 != 0.0 and NaN == NaN, unlike ``torch.equal``)."""
    return tensor.view(torch.int32 if tensor.dtype == torch.float32 else torch.int16)


def _float_layer(out_features: int, in_features: int) -> nn.Linear:
    """A seeded float layer whose rows span six decades, so that blocks differ widely in absmax."""
    torch.manual_seed(out_features * 100 + in_features)
    linear = nn.Linear(in_features, out_features)
    linear.weight.data.mul_(torch.logspace(-3, 3, out_features).unsqueeze(1))
    return linear


def _fsdp_view(layer: nn.Module) -> nn.Module:
    """Replace the ``Params4bit`` by a plain parameter viewing a flat tensor, as FSDP's ``use_orig_params`` does."""
    packed = layer.weight.data
    flat = torch.cat([torch.zeros(3, dtype=packed.dtype), packed.flatten()])
    layer.weight = nn.Parameter(flat[3:].view(packed.shape), requires_grad=False)
    return layer


def _old_4bit(layer: nn.Module, dtype: torch.dtype, reference) -> torch.Tensor:
    """The reference: bitsandbytes' dequantization (in the state's dtype) cast to ``dtype``; where a row is not whole
    blocks, by its torch code (``reference``; its CPU op is wrong there on AVX-512 hosts, see ``conftest``), with
    zeros made +0.0 (that code's FP4 table has +0.0 where its kernels and ours have -0.0)."""
    state = _state(layer)
    if _whole_blocks(layer):
        return bnb.functional.dequantize_4bit(layer.weight.data, state).to(dtype)
    return reference(layer.weight.data, state, state.dtype).to(dtype)


def _state(layer: nn.Module):
    return getattr(layer.weight, 'quant_state', None) or layer.quant_state


def _whole_blocks(layer: nn.Module) -> bool:
    return _state(layer).shape[-1] % _state(layer).blocksize == 0


def _old_8bit(layer: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """The reference: ``int8 * scales / 127`` with every operand cast to ``dtype`` first."""
    scales = layer.weight.SCB if getattr(layer.weight, 'SCB', None) is not None else layer.state.SCB
    return layer.weight.data.to(dtype) * (scales.to(dtype) / 127.0).unsqueeze(1)


@pytest.mark.parametrize('quant_type, double_quant, state_dtype, layout',
                         itertools.product(('nf4', 'fp4'), (True, False), (None, torch.bfloat16),
                                           ('uint8', 'fsdp-float32', 'fsdp-bfloat16')))
def test_4bit_dequantization_is_bit_identical_to_bnb_then_cast(bnb_dequantize_4bit, quant_type, double_quant,
                                                               state_dtype, layout):
    storage = None if layout == 'uint8' else getattr(torch, layout.split('-')[1])
    for shape in SHAPES:
        layer = quantize_linear(_float_layer(*shape), 4, quant_type, double_quant, state_dtype, storage)
        if storage is not None:
            layer = _fsdp_view(layer)
            assert not hasattr(layer.weight, 'quant_state')
        for dtype in DTYPES:
            expected, got = _old_4bit(layer, dtype, bnb_dequantize_4bit), dequantize_weight(layer, dtype)
            assert got.dtype == dtype and got.shape == shape
            if not _whole_blocks(layer):  # the sign of zero apart (see _old_4bit)
                expected, got = expected + 0.0, got + 0.0
            assert torch.equal(_bits(got), _bits(expected)), (shape, dtype)


@pytest.mark.parametrize('dtype', DTYPES)
def test_8bit_dequantization_is_bit_identical_to_the_cast_formula(dtype):
    layer = quantize_linear(_float_layer(40, 24), 8)
    for _ in range(2):  # the second call reads the cached scale column
        got = dequantize_weight(layer, dtype)
        assert got.dtype == dtype and torch.equal(_bits(got), _bits(_old_8bit(layer, dtype)))


def test_8bit_scale_column_follows_the_scales():
    """The cached column is rebuilt when the scales are changed in place (load_state_dict) or replaced."""
    layer = quantize_linear(_float_layer(40, 24), 8)
    before = dequantize_weight(layer, torch.bfloat16)
    layer.weight.SCB.mul_(2)  # in place, as Linear8bitLt._load_from_state_dict copies a checkpoint's SCB
    assert torch.equal(dequantize_weight(layer, torch.bfloat16), before * 2)
    layer.weight.SCB = layer.weight.SCB / 4
    assert torch.equal(dequantize_weight(layer, torch.bfloat16), before / 2)
    with torch.inference_mode():  # scales made in inference mode have no version counter: not cached
        layer.weight.SCB = layer.weight.SCB * 2
        assert torch.equal(dequantize_weight(layer, torch.bfloat16), before)


@pytest.mark.parametrize('bits, kwargs, dtype, expected', [
    # nested absmax (blockwise op + offset) and the 4-bit op; before: a cast of the float32 result after it (5)
    (4, dict(double_quant=True), torch.bfloat16,
     ['bitsandbytes.dequantize_blockwise.default', 'aten.add_.Tensor', 'aten.detach.default',
      'bitsandbytes.dequantize_4bit.default']),
    (4, dict(double_quant=False), torch.bfloat16, ['aten.detach.default', 'bitsandbytes.dequantize_4bit.default']),
    # a bfloat16 state read in float32: rounded to bfloat16 first, as before, so it keeps its cast
    (4, dict(double_quant=False, compute_dtype=torch.bfloat16), torch.float32,
     ['aten.detach.default', 'bitsandbytes.dequantize_4bit.default', 'aten._to_copy.default']),
    # before: cast weight, cast scales, divide, unsqueeze, multiply (6 with .data's detach)
    (8, {}, torch.bfloat16, ['aten.detach.default', 'aten.mul.Tensor']),
])
def test_dequantize_weight_dispatches_few_ops(bits, kwargs, dtype, expected, op_log):
    layer = quantize_linear(nn.Linear(64, 64), bits, **kwargs)
    dequantize_weight(layer, dtype)  # builds the 8-bit scale column
    with op_log as log:
        dequantize_weight(layer, dtype)
    assert log.ops == expected


@pytest.mark.parametrize('bits, quant_type, state_dtype, dtype', [
    (4, 'nf4', None, torch.bfloat16), (4, 'fp4', None, torch.float32),
    (4, 'nf4', torch.bfloat16, torch.float32),  # bitsandbytes' bf16 values cast up: their rounding must stay
    (8, None, None, torch.bfloat16), (8, None, torch.float16, torch.float16)])  # the scale column's two roundings
def test_dequantization_compiled_by_inductor_is_bit_identical_to_eager(bits, quant_type, state_dtype, dtype):
    """Inside ``torch.compile`` the weight is dequantized by torch ops that inductor generates code for; the values
    keep the eager bits (bitsandbytes' for 4-bit): a fused multiply-add, or a 16-bit rounding that inductor's
    float32 arithmetic drops, would show."""
    layer = quantize_linear(_float_layer(48, 64), bits, quant_type or 'nf4', True, state_dtype)
    torch._dynamo.reset()
    got = torch.compile(lambda: dequantize_weight(layer, dtype), fullgraph=True)()
    torch._dynamo.reset()
    want = _old_4bit(layer, dtype, None) if bits == 4 else _old_8bit(layer, dtype)
    assert torch.equal(_bits(got), _bits(want))
