"""A LoRA layer applied after an activation (``fc2(act(h))``) keeps ``h``, not a copy of ``act(h)``, and computes
exactly what ``fc2(act(h))`` computes, in forward and in every gradient."""
import pytest
import torch
from torch import nn

from opentad_lora.models.layers.mlp import Mlp
from opentad_lora.peft import apply_lora, linear_after_activation
from opentad_lora.peft import functional as LF

ACTIVATIONS = [nn.GELU(), nn.GELU(approximate='tanh'), nn.SiLU(), nn.ReLU()]


def _layer(bits=None, dropout=0.0):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 24))
    apply_lora(model, dict(r=4, targets=['0'], quantize_bits=bits, dropout=dropout))
    with torch.no_grad():
        model[0].lora_B['default'].weight.normal_()
    return model[0].train()


def _grads(out, tensors):
    return torch.autograd.grad((out.float() ** 2).sum(), tensors)


@pytest.mark.parametrize('act', ACTIVATIONS, ids=lambda a: f'{type(a).__name__}{getattr(a, "approximate", "")}')
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


def test_input_fn_under_autocast_equals_applying_the_activation_first(monkeypatch):
    monkeypatch.setattr(LF, 'PLAIN_MAX_ROWS', 0)
    layer = _layer()
    h = torch.randn(40, 32, requires_grad=True)
    params = [h, layer.lora_A['default'].weight, layer.lora_B['default'].weight]
    results = []
    for fuse in (True, False):
        with torch.autocast('cpu', dtype=torch.bfloat16):
            hidden = h.to(torch.bfloat16)  # an fc1 output under autocast
            out = layer(hidden, input_fn=nn.GELU()) if fuse else layer(nn.GELU()(hidden))
        results.append((out, *_grads(out, params)))
    for got, want in zip(*results):  # the same bf16 operations in the same order
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def _saved_bytes(fn) -> int:
    storages = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(storages.values())


@pytest.mark.parametrize('dropout', [0.0, 0.1])
def test_lora_mlp_keeps_no_copy_of_the_hidden_activation(dropout, monkeypatch):
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
    base = _saved_bytes(lambda: fc1_only(x))
    fused = _saved_bytes(lambda: both(x))
    unfused = _saved_bytes(lambda: both.fc2(both.act(both.fc1(x))))
    lora_params = 4 * rank * (hidden + 32)  # the compute-dtype A and s*B the function keeps
    assert fused - base <= rows * rank * 4 + lora_params + 8 * 1024  # + the rank-r product (+ generator state)
    assert unfused - fused >= rows * hidden * 4  # what applying GELU outside would keep
    # and the Mlp computes what the plain composition computes
    torch.manual_seed(5)
    out = both(x)
    torch.manual_seed(5)
    torch.testing.assert_close(out, both.fc2(both.act(both.fc1(x))), rtol=1e-5, atol=1e-5)


def test_other_activations_are_applied_first_and_refused_as_input_fn():
    layer = _layer()
    h = torch.randn(3, 32)
    torch.testing.assert_close(linear_after_activation(layer, nn.Tanh(), h), layer(torch.tanh(h)))
    torch.testing.assert_close(linear_after_activation(nn.Identity(), nn.GELU(), h), nn.GELU()(h))
    with pytest.raises(TypeError, match='GELU/SiLU/ReLU'):
        layer(h, input_fn=nn.Tanh())
    with pytest.raises(TypeError, match='GELU/SiLU/ReLU'):
        layer(h, input_fn=nn.ReLU(inplace=True))
