"""QLoRA on CPU: bitsandbytes 4-bit (NF4/FP4) and 8-bit bases under float LoRA adapters."""
import copy

import pytest
import torch
from torch import nn

from opentad_lora.peft import (apply_lora, dequantize_weight, disable_adapters, get_lora_info, is_quantized,
                               load_adapter, merge_and_unload, merge_lora, quantize_linear, save_adapter,
                               unmerge_lora)


class MLP(nn.Module):
    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.fc2(torch.nn.functional.gelu(self.fc1(x))))


QUANT_CASES = [dict(quantize_bits=4, quant_type='nf4'), dict(quantize_bits=4, quant_type='fp4', double_quant=False),
               dict(quantize_bits=8)]


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize('quant', QUANT_CASES)
def test_quantized_base_stays_close_to_float_and_only_lora_trains(quant):
    float_model = MLP()
    model = copy.deepcopy(float_model)
    report = apply_lora(model, dict(r=4, alpha=8, targets=['fc1', 'fc2'], **quant))
    assert all(is_quantized(getattr(model, n).base_layer) for n in ('fc1', 'fc2'))
    assert report.wrapped['fc1']['quantize_bits'] == quant['quantize_bits']
    # the dequantized weight is within the format's rounding error of the float weight
    for name in ('fc1', 'fc2'):
        weight = getattr(float_model, name).weight
        tolerance = 0.15 if quant['quantize_bits'] == 4 else 0.01
        assert _relative_error(dequantize_weight(getattr(model, name).base_layer), weight) < tolerance
    x = torch.randn(8, 64, requires_grad=True)
    out = model(x)
    assert _relative_error(out, float_model(x)) < (0.2 if quant['quantize_bits'] == 4 else 0.02)
    out.square().mean().backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads == {f'{m}.lora_{ab}.default.weight' for m in ('fc1', 'fc2') for ab in 'AB'}
    assert x.grad is not None and x.grad.abs().sum() > 0  # gradients flow through the frozen 4/8-bit base
    info = get_lora_info(model)
    assert info['total'] == sum(p.numel() for p in float_model.parameters()) + report.trainable


@pytest.mark.parametrize('quant', QUANT_CASES)
def test_quantized_merge_matches_adapter_output(quant):
    float_model = MLP()
    model = copy.deepcopy(float_model)
    apply_lora(model, dict(r=4, alpha=8, targets=['fc1', 'fc2'], **quant))
    with torch.no_grad():
        for name in ('fc1', 'fc2'):
            getattr(model, name).lora_B['default'].weight.normal_(0, 0.05)
    x = torch.randn(8, 64)
    expected = model(x)
    # float export: the dequantized base plus the exact update equals the adapter forward (up to fp32 rounding)
    merged_float = merge_and_unload(copy.deepcopy(model))
    assert isinstance(merged_float.fc1, nn.Linear) and not is_quantized(merged_float.fc1)
    torch.testing.assert_close(merged_float(x), expected, rtol=1e-4, atol=1e-4)
    # re-quantized merge: exactly the quantization of the float merge, with the same bitsandbytes settings
    merged_quant = merge_and_unload(copy.deepcopy(model), requantize=True)
    for name in ('fc1', 'fc2'):
        layer = getattr(merged_quant, name)
        assert is_quantized(layer) and type(layer) is type(getattr(model, name).base_layer)
        reference = quantize_linear(getattr(merged_float, name), quant['quantize_bits'],
                                    quant.get('quant_type', 'nf4'), quant.get('double_quant', True))
        assert torch.equal(dequantize_weight(layer), dequantize_weight(reference))
    # in-place merge is the same re-quantization; unmerge returns to the base within one more rounding
    before = dequantize_weight(model.fc1.base_layer)
    merge_lora(model)
    torch.testing.assert_close(model(x), merged_quant(x))
    unmerge_lora(model)
    assert not model.fc1.merged
    rounding = _relative_error(before, float_model.fc1.weight)  # what one quantization of this weight costs
    assert _relative_error(dequantize_weight(model.fc1.base_layer), before) <= 2 * rounding


def test_qlora_adapter_round_trip_restores_quantization(tmp_path):
    model = MLP()
    apply_lora(model, dict(r=4, targets=['fc1', 'fc2'], quantize_bits=4, compute_dtype='bf16'))
    assert model.fc1.lora_A['default'].weight.dtype == torch.float32  # master weights stay float32, as PEFT
    with torch.no_grad():
        model.fc1.lora_B['default'].weight.normal_()
    save_adapter(model, tmp_path)
    fresh = MLP()
    fresh.load_state_dict({k: v for k, v in _float_state(model).items()})
    load_adapter(fresh, tmp_path)
    assert is_quantized(fresh.fc1.base_layer), 'our own config (with quantize_bits) travels in the file metadata'
    assert torch.equal(fresh.fc1.lora_B['default'].weight, model.fc1.lora_B['default'].weight)


def _float_state(model: nn.Module) -> dict:
    """A float state dict of the original architecture, rebuilt from a QLoRA model (norm weights + dequantized)."""
    merged = merge_and_unload(copy.deepcopy(model))
    with torch.no_grad():
        for name in ('fc1', 'fc2'):  # remove the adapter delta again: we want the base only
            getattr(merged, name).weight.sub_(getattr(model, name).delta_weight('default'))
    return merged.state_dict()


def _stored_bytes(layer: nn.Module) -> int:
    """Bytes of the packed weight plus every tensor of its quantization state (absmax, nested absmax, code)."""
    weight = layer.weight
    total = weight.data.numel() * weight.data.element_size()
    state = weight.quant_state
    tensors = [state.absmax, state.code]
    if state.nested:
        tensors += [state.state2.absmax, state.state2.code]
    return total + sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize('double_quant, expected', [(True, 0.52), (False, 0.5625)])
def test_nf4_storage_per_parameter(double_quant, expected):
    """NF4 stores 4 bits a weight plus one absmax per 64 weights: 0.5625 byte/param, ~0.52 with double quant."""
    layer = quantize_linear(nn.Linear(4096, 4096, bias=False), 4, 'nf4', double_quant)
    per_param = _stored_bytes(layer) / (4096 * 4096)
    assert per_param == pytest.approx(expected, abs=0.005)


@pytest.mark.parametrize('bits', [4, 8])
def test_quantized_layer_keeps_the_bias_dtype(bits):
    """A bf16 model's bias stays bf16, as bitsandbytes-loaded models keep it (float32 doubled its bytes)."""
    torch.manual_seed(0)
    linear = nn.Linear(64, 32).to(torch.bfloat16)
    layer = quantize_linear(linear, bits, 'nf4', True, compute_dtype=torch.bfloat16 if bits == 4 else None)
    assert layer.bias.dtype == torch.bfloat16 and not layer.bias.requires_grad
    assert torch.equal(layer.bias, linear.bias)
    model = nn.Sequential(layer)
    apply_lora(model, dict(r=4, targets=['0']))
    merge_lora(model)  # re-quantizes the merged weight
    assert model[0].base_layer.bias.dtype == torch.bfloat16 and torch.equal(model[0].base_layer.bias, linear.bias)


def test_each_float_layer_is_freed_once_quantized(monkeypatch):
    """apply_lora holds no replaced float layer while it quantizes the next: the build needs the float model plus
    one layer's copy, not the float model and the whole quantized one (PEFT + bitsandbytes swaps layer by layer)."""
    import weakref
    from opentad_lora.peft import inject
    model = nn.Sequential(*(nn.Linear(64, 64) for _ in range(3)))
    originals = [weakref.ref(layer) for layer in model]
    alive, quantize = [], inject.quantize_linear
    monkeypatch.setattr(inject, 'quantize_linear',
                        lambda *args: alive.append(sum(ref() is not None for ref in originals)) or quantize(*args))
    apply_lora(model, dict(r=4, targets=['0', '1', '2'], quantize_bits=4))
    assert alive == [3, 2, 1]


def test_eval_forward_of_a_disabled_4bit_layer_keeps_training_working():
    """bitsandbytes' CPU inference repacking must not break later training or dequantization."""
    model = MLP()
    apply_lora(model, dict(r=4, targets=['fc1', 'fc2'], quantize_bits=4))
    before = dequantize_weight(model.fc1.base_layer)
    model.eval()
    with torch.no_grad(), disable_adapters(model):
        model(torch.randn(2, 64))  # the bitsandbytes forward itself runs here
    assert torch.equal(dequantize_weight(model.fc1.base_layer), before)
    model.train()
    model(torch.randn(2, 64, requires_grad=True)).sum().backward()
    assert model.fc1.lora_A['default'].weight.grad is not None


def test_float_quant_storage_holds_the_same_4bit_weights():
    """quant_storage (for FSDP) changes only the container dtype: same bytes, same dequantized weight."""
    linear = torch.nn.Linear(64, 32)
    packed_uint8 = quantize_linear(linear, 4)
    packed_float = quantize_linear(linear, 4, quant_storage=torch.float32)
    assert packed_float.weight.dtype == torch.float32
    assert packed_float.weight.numel() * 4 == packed_uint8.weight.numel() == 64 * 32 // 2
    torch.testing.assert_close(dequantize_weight(packed_float), dequantize_weight(packed_uint8), rtol=0, atol=0)


@pytest.mark.parametrize('bits', [4, 8])
def test_compiled_wide_qlora_layer_is_one_graph_with_eager_numbers(bits, monkeypatch):
    """A wide QLoRA layer (out >= 2 in, whose eager fused GEMM takes ``[W | sB]``) traces as one graph
    (``fullgraph``) of plain ops and gives the eager fused function's numbers: the same products summed in another
    order, equal to float32 rounding."""
    from opentad_lora.peft import functional as LF
    monkeypatch.setattr(LF, 'PLAIN_MAX_ROWS', 0)  # the fused function, whatever the size
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 96))
    apply_lora(model, dict(r=4, alpha=8, targets=['0'], quantize_bits=bits))
    with torch.no_grad():
        model[0].lora_B['default'].weight.normal_()
    x = torch.randn(5, 32, requires_grad=True)
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True)
    outs = [run(x) for run in (model, compiled)]
    grads = [torch.autograd.grad(out.square().sum(), [x, model[0].lora_A['default'].weight]) for out in outs]
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()
