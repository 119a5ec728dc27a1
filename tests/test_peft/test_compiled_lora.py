"""The compiled layers' LoRA function (K-concatenated GEMMs) equals the reference in forward and every gradient, is
routed to where it applies, and is recomputed inside checkpointed blocks on the torch versions that use it."""
import pytest
import torch
from torch import nn
from torch._functorch.aot_autograd import aot_module_simplified, make_boxed_func
from torch._functorch.partitioners import default_partition
from torch.utils.checkpoint import checkpoint

from opentad_lora.peft import apply_lora, dequantize_weight, quantize_linear
from opentad_lora.peft import compiled_lora as CL
from opentad_lora.peft.functional import lora_linear_reference

# (in, out) -> which directions concatenate: qkv-like, fc2-like, proj-like, neither
SHAPES = {(16, 48): (True, False), (48, 16): (False, True), (16, 16): (True, False), (48, 40): (False, False)}
SHAPE_IDS = ['wider_out', 'wider_in', 'square', 'slightly_narrower_out']


def _layer_inputs(features, x_grad: bool, bias: bool, weight_dtype=torch.float32):
    in_features, out_features = features
    torch.manual_seed(0)
    x = torch.randn(3, 7, in_features, requires_grad=x_grad)
    weight = torch.randn(out_features, in_features).to(weight_dtype)  # frozen
    b = torch.randn(out_features, requires_grad=True) if bias else None
    lora_a = torch.randn(4, in_features, requires_grad=True)
    lora_b = torch.randn(out_features, 4, requires_grad=True)
    return x, weight, b, lora_a, lora_b


def _as_layer(weight: torch.Tensor, bias) -> nn.Linear:
    """A linear layer holding ``weight`` and ``bias`` themselves (not copies), so gradients reach the test's tensors."""
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    del layer.weight, layer.bias
    layer.weight, layer.bias = weight, bias
    return layer


def _on_layer(fn):
    """``fn(x, layer, a, b, s)`` called as the reference is, ``(x, weight, bias, a, b, s)``."""
    return lambda x, weight, bias, lora_a, lora_b, scaling: fn(x, _as_layer(weight, bias), lora_a, lora_b, scaling)


def _output_and_grads(fn, tensors, autocast: bool = False):
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        out = fn(*tensors, 0.5)
    targets = [t for t in tensors if t is not None and t.requires_grad]
    return [out, *torch.autograd.grad((out.float() ** 2).sum(), targets)]


@pytest.mark.parametrize('features', list(SHAPES), ids=SHAPE_IDS)
@pytest.mark.parametrize('x_grad', [True, False], ids=['x_grad', 'no_x_grad'])
@pytest.mark.parametrize('bias', [True, False], ids=['bias', 'no_bias'])
@pytest.mark.parametrize('backend', [None, 'aot_eager'], ids=['eager', 'traced'])
def test_concat_gemm_matches_reference(features, x_grad, bias, backend):
    assert CL.concat_directions(*features) == SHAPES[features]
    tensors = _layer_inputs(features, x_grad, bias)
    fn = CL.lora_linear_compiled if backend is None else torch.compile(CL.lora_linear_compiled, backend=backend,
                                                                      fullgraph=True)
    got = _output_and_grads(_on_layer(fn), tensors)
    want = _output_and_grads(lora_linear_reference, tensors)
    assert len(got) == len(want)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    for g, w in zip(got[1:], want[1:]):  # as the fused function's test: float32 sums in another order
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
    torch._dynamo.reset()


@pytest.mark.parametrize('features', list(SHAPES), ids=SHAPE_IDS)
@pytest.mark.parametrize('weight_dtype', [torch.float32, torch.bfloat16], ids=['float32_base', 'bf16_base'])
def test_concat_gemm_under_autocast_is_within_bf16_rounding_of_the_reference(features, weight_dtype):
    """bf16 autocast: the concatenated GEMM rounds once where the reference rounds the base and low-rank products
    apart, so the two agree to bf16 precision, not exactly."""
    tensors = _layer_inputs(features, True, True, weight_dtype)
    got = _output_and_grads(_on_layer(CL.lora_linear_compiled), tensors, autocast=True)
    want = _output_and_grads(lora_linear_reference, tensors, autocast=True)
    assert got[0].dtype == want[0].dtype == torch.bfloat16
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
        torch.testing.assert_close(g.float(), w.float(), rtol=2e-2, atol=2e-2 * w.float().abs().max().item())


@pytest.mark.parametrize('features', list(SHAPES), ids=SHAPE_IDS)
def test_concat_gemm_saves_the_adapter_and_one_rank_r_tensor(features):
    """What the function itself keeps for backward in eager mode (the design: nothing activation- or weight-sized;
    the frozen weight is read from the layer again in backward)."""
    x, weight, _, lora_a, lora_b = _layer_inputs(features, True, False)
    lora_a, lora_b = (nn.Parameter(t.detach()) for t in (lora_a, lora_b))
    x2d = x.reshape(-1, x.shape[-1])
    xa = x2d.detach() @ lora_a.t()
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        CL.LoRAConcatGEMM.apply(x2d, xa, _as_layer(weight, None), lora_a, lora_b, 0.5,
                                *CL.concat_directions(*features))
    assert [t is xa for t in saved] == [True, False, False] and saved[1] is lora_a and saved[2] is lora_b


@pytest.mark.parametrize('bits', [4, 8])
@pytest.mark.parametrize('backend', [None, 'aot_eager'], ids=['eager', 'traced'])
def test_concat_gemm_on_a_quantized_base_matches_the_reference_on_its_dequantized_weight(bits, backend):
    """A bitsandbytes base is dequantized inside the function (torch ops when traced); the reference gets the same
    dequantized weight as a float tensor. Both directions of concatenation (the 128->64 layer concatenates backward)."""
    for features in ((64, 128), (128, 64)):
        x, weight, bias, lora_a, lora_b = _layer_inputs(features, True, True)
        layer = quantize_linear(_as_layer(weight, None), bits)
        del layer.bias
        layer.bias = bias
        fn = CL.lora_linear_compiled if backend is None else torch.compile(CL.lora_linear_compiled, backend=backend,
                                                                          fullgraph=True)
        got = _output_and_grads(lambda x, _w, _b, a, b, s: fn(x, layer, a, b, s), (x, None, bias, lora_a, lora_b))
        want = _output_and_grads(lora_linear_reference, (x, dequantize_weight(layer), bias, lora_a, lora_b))
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
        torch._dynamo.reset()


@pytest.mark.parametrize('bases', [{}, dict(quantize_bits=4), dict(quantize_bits=8)], ids=['float', 'qlora4', 'qlora8'])
def test_compiled_layers_keep_nothing_weight_sized_for_backward(monkeypatch, bases):
    """Whole-compiled with the partitioner inductor uses: what autograd keeps is activations, the adapters and small
    statistics (4-bit absmax), never a cast, dequantized or concatenated copy of a frozen weight (the backward's
    ``[W | sB]`` differs from forward's ``[W | B]``: one shared node would be kept, as the partitioner never
    recomputes what a matrix product reads in backward)."""
    monkeypatch.setattr(CL, 'AUTOGRAD_FUNCTIONS_RECOMPUTED', True)
    monkeypatch.setattr(CL, 'CONCAT_MIN_ROWS', 0)
    torch.manual_seed(0)
    rows, weight_numel = 40, 64 * 128
    model = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64))
    apply_lora(model, dict(r=4, alpha=8, targets=['0', '2'], **bases))
    x = torch.randn(rows, 64, requires_grad=True)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend='aot_eager_decomp_partition', fullgraph=True)
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = compiled(x)
    out.float().sum().backward()
    torch._dynamo.reset()
    assert model[0].lora_B['default'].weight.grad is not None
    not_activations = [(tuple(t.shape), t.dtype) for t in kept if t.shape[0] != rows]
    assert not_activations and all(torch.Size(shape).numel() <= weight_numel // 16 for shape, _ in not_activations), \
        not_activations


def test_compiled_layers_route_by_base_dropout_and_rows(monkeypatch, autograd_functions_in):
    """Frozen bases (float or quantized) without dropout take the function; dropout in training, a trainable base
    (it needs its full gradient), a float base of fewer than ``CONCAT_MIN_ROWS`` rows or torch < 2.12 keep plain ops."""
    monkeypatch.setattr(CL, 'AUTOGRAD_FUNCTIONS_RECOMPUTED', True)
    monkeypatch.setattr(CL, 'CONCAT_MIN_ROWS', 5)

    def functions(config, train_base=False, training=True, rows=5):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 16))
        apply_lora(model, dict(r=4, alpha=8, targets=['0'], **config))
        model[0].base_layer.weight.requires_grad_(train_base)
        model.train(training)
        torch._dynamo.reset()
        return autograd_functions_in(torch._dynamo.explain(model)(torch.randn(rows, 16)).graphs[0])

    assert functions({}) == ['LoRAConcatGEMM']
    assert functions(dict(dropout=0.1), training=False) == ['LoRAConcatGEMM']
    assert functions(dict(dropout=0.1)) == []
    assert functions({}, train_base=True) == []
    assert functions(dict(quantize_bits=4)) == ['LoRAConcatGEMM']
    assert functions({}, rows=4) == []
    assert functions(dict(quantize_bits=4), rows=4) == ['LoRAConcatGEMM']  # dequantization writes W anyway
    monkeypatch.setattr(CL, 'AUTOGRAD_FUNCTIONS_RECOMPUTED', False)
    assert functions({}) == []
    torch._dynamo.reset()


class _CheckpointedLoRA(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 32)
        apply_lora(self, dict(r=4, alpha=8, targets=['fc']))

    def _block(self, x: torch.Tensor) -> torch.Tensor:
        fc = self.fc
        return CL.lora_linear_compiled(x, fc.base_layer, fc.lora_A['default'].weight, fc.lora_B['default'].weight,
                                       fc.scaling['default']).relu()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return checkpoint(self._block, x, use_reentrant=False)


def test_function_ops_in_checkpointed_blocks_are_recomputed_exactly_where_the_gate_says():
    """The joint graph AOTAutograd hands the partitioner: the forward ops of ``LoRAConcatGEMM`` inside a checkpointed
    block carry recompute tags on the torch versions where :data:`AUTOGRAD_FUNCTIONS_RECOMPUTED` is True (without
    them the block's activations are kept, pytorch#177396), and not where it is False."""
    tags = []

    def partition(joint, inputs, num_fwd_outputs, **kwargs):
        outputs = next(node for node in joint.graph.nodes if node.op == 'output').args[0]
        forward, stack = set(), [out for out in outputs[:num_fwd_outputs] if isinstance(out, torch.fx.Node)]
        while stack:  # the forward: what the forward outputs are computed from
            node = stack.pop()
            if node not in forward:
                forward.add(node)
                stack.extend(node.all_input_nodes)
        tags.extend(node.meta.get('recompute') for node in forward if node.op == 'call_function'
                    and 'LoRAConcatGEMM' in node.meta.get('stack_trace', ''))
        return default_partition(joint, inputs, num_fwd_outputs=num_fwd_outputs, **kwargs)

    def backend(graph_module, example_inputs):
        return aot_module_simplified(graph_module, example_inputs, fw_compiler=lambda gm, _: make_boxed_func(gm),
                                     partition_fn=partition)

    torch._dynamo.reset()
    torch.compile(_CheckpointedLoRA(), backend=backend)(torch.randn(5, 16)).sum().backward()
    torch._dynamo.reset()
    assert tags, 'no forward op of LoRAConcatGEMM found in the joint graph'
    assert all(tag is not None for tag in tags) == CL.AUTOGRAD_FUNCTIONS_RECOMPUTED, tags
