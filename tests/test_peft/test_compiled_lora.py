"""The compiled layers' LoRA function (K-concatenated GEMMs) equals the reference in forward and every gradient."""
import pytest
import torch
from torch import nn

from opentad_lora.peft import apply_lora
from opentad_lora.peft import compiled_lora as CL
from opentad_lora.peft.functional import lora_linear_reference

# (in, out) -> which directions concatenate: qkv-like, fc2-like, proj-like
SHAPES = {(16, 48): (True, False), (48, 16): (False, True), (16, 16): (True, False)}


def _layer_inputs(features, x_grad: bool, bias: bool):
    in_features, out_features = features
    torch.manual_seed(0)
    x = torch.randn(3, 7, in_features, requires_grad=x_grad)
    weight = torch.randn(out_features, in_features)  # frozen
    b = torch.randn(out_features, requires_grad=True) if bias else None
    lora_a = torch.randn(4, in_features, requires_grad=True)
    lora_b = torch.randn(out_features, 4, requires_grad=True)
    return x, weight, b, lora_a, lora_b


def _output_and_grads(fn, tensors):
    out = fn(*tensors, 0.5)
    targets = [t for t in tensors if t is not None and t.requires_grad]
    return [out, *torch.autograd.grad((out ** 2).sum(), targets)]


@pytest.mark.parametrize('features', list(SHAPES), ids=['wider_out', 'wider_in', 'square'])
@pytest.mark.parametrize('x_grad', [True, False], ids=['x_grad', 'no_x_grad'])
@pytest.mark.parametrize('bias', [True, False], ids=['bias', 'no_bias'])
@pytest.mark.parametrize('backend', [None, 'aot_eager'], ids=['eager', 'traced'])
def test_concat_gemm_matches_reference(features, x_grad, bias, backend):
    assert CL.concat_directions(*features) == SHAPES[features]
    tensors = _layer_inputs(features, x_grad, bias)
    fn = CL.lora_linear_compiled if backend is None else torch.compile(CL.lora_linear_compiled, backend=backend,
                                                                      fullgraph=True)
    got = _output_and_grads(fn, tensors)
    want = _output_and_grads(lora_linear_reference, tensors)
    assert len(got) == len(want)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    for g, w in zip(got[1:], want[1:]):  # as the fused function's test: float32 sums in another order
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
    torch._dynamo.reset()


@pytest.mark.parametrize('features', list(SHAPES), ids=['wider_out', 'wider_in', 'square'])
def test_concat_gemm_saves_parameters_and_rank_r_tensors_only(features):
    """What an autograd function saves, inductor keeps (pytorch#177396 before torch 2.12): nothing activation-sized."""
    x, weight, _, lora_a, lora_b = _layer_inputs(features, True, False)
    params = [nn.Parameter(t.detach(), requires_grad=t.requires_grad) for t in (weight, lora_a, lora_b)]
    x2d = x.reshape(-1, x.shape[-1])
    xa = x2d.detach() @ params[1].t()
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        CL.LoRAConcatGEMM.apply(x2d, xa, *params, 0.5, *CL.concat_directions(*features))
    activations = [tuple(t.shape) for t in saved if not any(t is p for p in params)]
    assert activations == [(x2d.shape[0], 4)]


def test_compiled_layers_route_by_base_and_dropout(monkeypatch, autograd_functions_in):
    """Float bases without dropout take the function; a quantized base, dropout in training or a trainable base
    keep plain ops (the concatenated GEMM's dx has no dropout mask, a trainable base needs its full gradient)."""
    monkeypatch.setattr(CL, 'AUTOGRAD_FUNCTIONS_RECOMPUTED', True)

    def functions(config, train_base=False, training=True):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 16))
        apply_lora(model, dict(r=4, alpha=8, targets=['0'], **config))
        model[0].base_layer.weight.requires_grad_(train_base)
        model.train(training)
        torch._dynamo.reset()
        return autograd_functions_in(torch._dynamo.explain(model)(torch.randn(5, 16)).graphs[0])

    assert functions({}) == ['LoRAConcatGEMM']
    assert functions(dict(dropout=0.1), training=False) == ['LoRAConcatGEMM']
    assert functions(dict(dropout=0.1)) == []
    assert functions({}, train_base=True) == []
    assert functions(dict(quantize_bits=4)) == []
    monkeypatch.setattr(CL, 'AUTOGRAD_FUNCTIONS_RECOMPUTED', False)
    assert functions({}) == []
    torch._dynamo.reset()
