"""LoRA dropout under ``torch.compile``: the layer traces plain ops as one graph without touching any generator
state (that was a graph break), keeps torch's mask for backward, and gives eager's numbers on the same mask.

The backend is ``aot_eager``: AOTAutograd traces forward and backward as inductor's input would be, but runs aten
ops, so ``native_dropout`` draws from torch's generator and the compiled mask is eager's for the same seed. Eager
runs the fused function, compiled ones plain ops (:func:`opentad_lora.peft.functional.use_plain_path`): the same
products added in another order, so float32 results agree to ~1e-5, where a different mask would differ by ~1.
"""
import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from opentad_lora.peft import apply_lora
from opentad_lora.peft import functional as LF
from opentad_lora.peft import lora_dropout

P = 0.1


def _refuse_under_compile(function):
    def guarded(*args):
        if torch.compiler.is_compiling():
            raise AssertionError('generator state read or set while compiling')
        return function(*args)
    return guarded


@pytest.fixture
def compiled_env(monkeypatch):
    """Fused path at any size, generator-state access loud under compile, a fresh dynamo cache."""
    monkeypatch.setattr(LF, 'PLAIN_MAX_ROWS', 0)
    monkeypatch.setenv('OPENTAD_LORA_DROPOUT_KERNEL', 'torch')
    monkeypatch.setattr(lora_dropout, '_rng_state', _refuse_under_compile(lora_dropout._rng_state))
    monkeypatch.setattr(lora_dropout, '_set_rng_state', _refuse_under_compile(lora_dropout._set_rng_state))
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _layer(bits):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 48))
    apply_lora(model, dict(r=4, targets=['0'], quantize_bits=bits, dropout=P))
    with torch.no_grad():
        model[0].lora_B['default'].weight.normal_()
    return model[0].train()


def _run(layer, x, seed):
    torch.manual_seed(seed)
    out = layer(x)
    params = [x, layer.lora_A['default'].weight, layer.lora_B['default'].weight]
    return (out, *torch.autograd.grad((out ** 2).sum(), params))


@pytest.mark.parametrize('bits', [None, 4], ids=['lora', 'qlora4'])
def test_compiled_dropout_is_one_graph_with_eager_numbers_on_the_same_mask(compiled_env, autograd_functions_in, bits):
    layer = _layer(bits)
    x = torch.randn(6, 40, 32, requires_grad=True)
    assert autograd_functions_in(torch._dynamo.explain(layer)(x).graphs[0]) == []  # plain ops (see the docstring)
    torch._dynamo.reset()
    counter = CompileCounterWithBackend('aot_eager')
    compiled = torch.compile(layer, backend=counter, fullgraph=True)  # any graph break raises
    eager_runs = [_run(layer, x, seed) for seed in (1, 2)]
    compiled_runs = [_run(compiled, x, seed) for seed in (1, 2)]
    assert counter.frame_count == 1 and counter.op_count > 0  # one graph, reused for the second step
    assert layer(x).grad_fn.dropout_way == 'redraw'  # eager paths unchanged
    layer.eval()
    undropped = layer(x)
    for eager, got in zip(eager_runs, compiled_runs):
        for want, value in zip(eager, got):
            torch.testing.assert_close(value, want, rtol=1e-4, atol=1e-4)
        assert (got[0] - undropped).abs().max().item() > 1e-3  # dropout was applied
    assert not torch.equal(compiled_runs[0][0], compiled_runs[1][0])  # a new mask each step


def test_compiled_dropout_keeps_the_bool_mask_and_one_dropped_out_copy(compiled_env):
    """What costs memory under compile, as in PEFT's layer: the bool mask (1 byte per input element) and the
    dropped-out input that ``dA`` reads; a checkpointed block recomputes both."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.partitioners import min_cut_rematerialization_partition

    saved = []

    def forward_compiler(graph, _):
        output = next(node for node in graph.graph.nodes if node.op == 'output')
        saved.extend((node.meta['val'].numel(), node.meta['val'].dtype) for node in output.args[0][1:])
        return make_boxed_func(graph.forward)

    backend = aot_autograd(fw_compiler=forward_compiler, bw_compiler=lambda graph, _: make_boxed_func(graph.forward),
                           partition_fn=min_cut_rematerialization_partition)
    x = torch.randn(6, 5, 32, requires_grad=True)
    torch.compile(_layer(None), backend=backend, fullgraph=True)(x).sum().backward()
    assert sorted(str(dtype) for numel, dtype in saved if numel == x.numel()) == ['torch.bool', 'torch.float32']
