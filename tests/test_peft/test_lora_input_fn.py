"""A LoRA layer applied after a norm or an activation (``qkv(norm1(x))``, ``fc2(act(h))``) keeps the function's
input, not a copy of its output, and computes exactly what the plain composition computes, in forward and in every
gradient."""
import pytest
import torch
from torch import nn

from opentad_lora.models.layers import Mlp, TransformerBlock
from opentad_lora.peft import apply_lora, linear_after
from opentad_lora.peft import functional as LF

def _frozen_norm():
    torch.manual_seed(1)
    norm = nn.LayerNorm(32, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    return norm.requires_grad_(False)


INPUT_FNS = [nn.GELU(), nn.GELU(approximate='tanh'), nn.SiLU(), nn.ReLU(), _frozen_norm(),
             nn.LayerNorm(32, elementwise_affine=False)]


def _layer(bits=None, dropout=0.0):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 24))
    apply_lora(model, dict(r=4, targets=['0'], quantize_bits=bits, dropout=dropout))
    with torch.no_grad():
        model[0].lora_B['default'].weight.normal_()
    return model[0].train()


def _grads(out, tensors):
    return torch.autograd.grad((out.float() ** 2).sum(), tensors)


@pytest.mark.parametrize('act', INPUT_FNS, ids=lambda a: f'{type(a).__name__}{getattr(a, "approximate", "")}')
@pytest.mark.parametrize('dropout', [0.0, 0.3])
@pytest.mark.parametrize('bits', [None, 4])
def test_input_fn_equals_the_reference_on_the_activation_output(act, dropout, bits, monkeypatch):
    monkeypatch.setattr(LF, 'PLAIN_MAX_ROWS', 0)  # the fused function, whatever the size
    layer = _layer(bits, dropout)
    h = torch.randn(5, 6, 32, requires_grad=True)
    params = [h, layer.lora_A['default'].weight, layer.lora_B['default'].weight]
    torch.manual_seed(3)
    fused = layer(h, input_fn=act)
    assert 'FusedLoRALinear' in type(fused.grad_fn).__name__
    fused_grads = _grads(fused, params)
    layer.fused = False  # plain autograd ops on act(h), the same dropout draw
    torch.manual_seed(3)
    ref = layer(act(h))
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(fused_grads, _grads(ref, params)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('fn, input_dtype', [(nn.GELU(), torch.bfloat16), (_frozen_norm(), torch.float32),
                                              (_frozen_norm(), torch.bfloat16)])
def test_input_fn_under_autocast_equals_applying_it_first(fn, input_dtype, monkeypatch):
    """GELU runs in its input's dtype, LayerNorm in float32 under autocast: recomputed in backward the same way."""
    monkeypatch.setattr(LF, 'PLAIN_MAX_ROWS', 0)
    layer = _layer()
    h = torch.randn(40, 32, requires_grad=True)
    params = [h, layer.lora_A['default'].weight, layer.lora_B['default'].weight]
    results = []
    for fuse in (True, False):
        with torch.autocast('cpu', dtype=torch.bfloat16):
            x = h.to(input_dtype)  # e.g. an fc1 output (bf16) or a float32 residual stream
            out = layer(x, input_fn=fn) if fuse else layer(fn(x))
        results.append((out, *_grads(out, params)))
    assert results[0][0].dtype == torch.bfloat16
    for got, want in zip(*results):  # the same operations in the same dtypes (up to one bf16 rounding)
        torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-5)


@pytest.mark.parametrize('dropout', [0.0, 0.1])
def test_lora_mlp_keeps_no_copy_of_the_hidden_activation(dropout, monkeypatch, saved_bytes):
    """LoRA on fc2 costs the rank-r product only: its input is the GELU output, and GELU already keeps its input."""
    monkeypatch.setattr(LF, 'PLAIN_MAX_ROWS', 0)
    rows, hidden, rank = 512, 128, 4
    x = torch.randn(rows, 32, requires_grad=True)

    def mlp(targets):
        torch.manual_seed(0)
        model = Mlp(32, hidden)
        apply_lora(model, dict(r=rank, targets=targets, dropout=dropout))
        return model.train()

    fc1_only, both = mlp(['fc1']), mlp(['fc1', 'fc2'])
    base = saved_bytes(lambda: fc1_only(x))
    fused = saved_bytes(lambda: both(x))
    unfused = saved_bytes(lambda: both.fc2(both.act(both.fc1(x))))
    lora_params = 4 * rank * (hidden + 32)  # the compute-dtype A and s*B the function keeps
    assert fused - base <= rows * rank * 4 + lora_params + 8 * 1024  # + the rank-r product (+ generator state)
    assert unfused - fused >= rows * hidden * 4  # what applying GELU outside would keep
    # and the Mlp computes what the plain composition computes
    torch.manual_seed(5)
    out = both(x)
    torch.manual_seed(5)
    torch.testing.assert_close(out, both.fc2(both.act(both.fc1(x))), rtol=1e-5, atol=1e-5)


def test_lora_block_keeps_no_copy_of_its_linears_inputs(monkeypatch, saved_bytes):
    """LoRA on qkv/fc1/fc2 of a pre-norm block adds only rank-r products to what the block without LoRA keeps."""
    monkeypatch.setattr(LF, 'PLAIN_MAX_ROWS', 0)
    x = torch.randn(2, 256, 32, requires_grad=True)

    def block(targets, recompute=True):
        torch.manual_seed(0)
        model = TransformerBlock(32, 2).requires_grad_(False)  # frozen, as under LoRA
        if targets:
            apply_lora(model, dict(r=4, targets=targets, dropout=0.1, recompute_inputs=recompute))
        return model.train()

    base = saved_bytes(lambda: block([])(x))
    lora = saved_bytes(lambda: block(['qkv', 'fc1', 'fc2'])(x))
    rank_r = 512 * 4 * 4 * 3 + 4 * 4 * (32 + 96 + 32 + 128 + 128 + 32) + 3 * 8 * 1024  # products, A/sB, generator
    assert lora - base <= rank_r < 512 * 32 * 4  # less than one copy of one norm output
    # the config switch off: each layer keeps its own input (two norm outputs and the GELU output), same numbers
    kept = saved_bytes(lambda: block(['qkv', 'fc1', 'fc2'], recompute=False)(x))
    assert kept - lora >= 512 * (32 + 32 + 128) * 4
    outs = []
    for recompute in (True, False):
        torch.manual_seed(4)
        outs.append(block(['qkv', 'fc1', 'fc2'], recompute)(x))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)


def test_other_functions_are_applied_first_and_refused_as_input_fn():
    layer = _layer()
    h = torch.randn(3, 32)
    trainable_norm = nn.LayerNorm(32)
    torch.testing.assert_close(linear_after(layer, nn.Tanh(), h), layer(torch.tanh(h)))
    torch.testing.assert_close(linear_after(layer, trainable_norm, h), layer(trainable_norm(h)))
    torch.testing.assert_close(linear_after(nn.Identity(), nn.GELU(), h), nn.GELU()(h))
    for fn in (nn.Tanh(), nn.ReLU(inplace=True), trainable_norm):
        with pytest.raises(TypeError, match='GELU/SiLU/ReLU'):
            layer(h, input_fn=fn)
