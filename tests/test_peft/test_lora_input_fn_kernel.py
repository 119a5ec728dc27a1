"""The Triton kernels that apply a LoRA layer's input function (LayerNorm, GELU) themselves (run here by Triton's
CPU interpreter): the dA kernel, from the saved input and forward's statistics, instead of backward applying it
again in memory; the forward kernel writing ``[fn(x) | xA]``; the dx kernel applying GELU's backward.

Float32 only: the interpreter's bfloat16 ``tl.dot`` is wrong (1e11 off on plain products); the bfloat16 path is
checked on the GPU by ``benchmarks/cuda_parity.py`` (``kernel_prologue`` and ``_fn_kernel_args`` cases)."""
import pytest
import torch
from torch import nn

pytest.importorskip('triton', reason='the kernels need Triton (requirements/tests.txt installs it)')

from opentad_lora.peft import functional as LF  # noqa: E402
from opentad_lora.peft.input_fn import Prologue  # noqa: E402

FUNCTIONS = {  # name -> the function over ``width`` features
    'layernorm': nn.LayerNorm,
    'layernorm-plain': lambda width: nn.LayerNorm(width, elementwise_affine=False),
    'gelu': lambda width: nn.GELU(),
}


@pytest.fixture
def kernels(monkeypatch):
    monkeypatch.setenv('OPENTAD_LORA_DROPOUT_KERNEL', 'interpret')  # CPU tensors too (conftest: TRITON_INTERPRET=1)
    monkeypatch.setattr(LF, 'PLAIN_MAX_ROWS', 0)
    from opentad_lora.peft import dropout_kernels
    return dropout_kernels


def _function(name: str, width: int = 48) -> nn.Module:
    torch.manual_seed(3)
    fn = FUNCTIONS[name](width)
    for param in fn.parameters():
        param.data.uniform_(0.5, 1.5).requires_grad_(False)
    return fn


@pytest.mark.parametrize('name', sorted(FUNCTIONS))
@pytest.mark.parametrize('p', [0.0, 0.2])
def test_grad_a_with_the_function_inside_equals_torch_maths(kernels, name, p):
    torch.manual_seed(0)
    fn = _function(name)
    x = torch.randn(100, 48) * 3 + 1  # float32, as AdaTAD's residual stream is under autocast
    g = torch.randn(100, 5)
    if name == 'gelu':
        prologue, y = Prologue(2), fn(x)
    else:
        y, mean, rstd = torch.ops.aten.native_layer_norm(x, fn.normalized_shape, fn.weight, fn.bias, fn.eps)
        prologue = Prologue(1, mean.reshape(-1), rstd.reshape(-1), fn.weight, fn.bias)
    seed = torch.tensor([77]) if p else None
    mask = kernels.keep_mask(seed, tuple(x.shape), p, x.device) / (1 - p) if p else torch.ones_like(x)
    torch.testing.assert_close(kernels.grad_a(g, x, seed, p, prologue), g.t() @ (y * mask), rtol=1e-5, atol=1e-4)


def _layer_outputs(fn: nn.Module, out_features: int, p: float) -> tuple:
    """Output and gradients of x, A and B of a seeded 48 -> ``out_features`` LoRA layer on ``fn(x)``, dropout ``p``
    (the same mask at every call)."""
    torch.manual_seed(1)
    x = torch.randn(2, 40, 48, requires_grad=True)
    weight, bias = torch.randn(out_features, 48), torch.randn(out_features)
    lora_a = torch.randn(4, 48, requires_grad=True)
    lora_b = torch.randn(out_features, 4, requires_grad=True)
    torch.manual_seed(5)
    out = LF.lora_linear(x, weight, bias, lora_a, lora_b, 2.0, p, True, input_fn=fn)
    return (out, *torch.autograd.grad(out.square().sum(), (x, lora_a, lora_b)))


def _spy(monkeypatch, owner, name: str) -> list:
    """What ``owner.name`` returns at each call from now on."""
    results, inside = [], getattr(owner, name)
    monkeypatch.setattr(owner, name, lambda *args: results.append(inside(*args)) or results[-1])
    return results


@pytest.mark.parametrize('name', ['layernorm', 'gelu'])
@pytest.mark.parametrize('p', [0.0, 0.25])
def test_fused_layer_gradients_equal_applying_the_function_again(kernels, monkeypatch, name, p):
    fn = _function(name)
    prologues = _spy(monkeypatch, LF, 'kernel_prologue')
    fused = _layer_outputs(fn, 96, p)
    assert any(prologues), 'the dA kernel did not apply the function'
    monkeypatch.setattr(LF, 'kernel_prologue', lambda *args: None)  # backward applies the function again
    for got, want in zip(fused, _layer_outputs(fn, 96, p)):  # a wide layer's forward norm is the fn kernel's
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)  # (own statistics): torch's differs by rounding


@pytest.mark.parametrize('name', sorted(FUNCTIONS))
@pytest.mark.parametrize('p', [0.0, 0.25])
@pytest.mark.parametrize('width', [48, 200])  # one tile of 64 columns; several, the last one partial
def test_fn_kernel_writes_the_operand_and_xa_torch_would(kernels, name, p, width):
    torch.manual_seed(0)
    fn = _function(name, width)
    x = torch.randn(70, width) * 3 + 2  # rows that are not a multiple of the kernel's 32
    lora_a = torch.randn(5, width)
    seed = torch.tensor([11]) if p else None
    norm = name != 'gelu'
    prologue = Prologue(1, weight=fn.weight, bias=fn.bias) if norm else Prologue(2)
    operand, xa, mean, rstd = kernels.fn_xa(x, prologue, fn.eps if norm else 0.0, lora_a, seed, p, torch.float32)
    if norm:
        y, want_mean, want_rstd = torch.ops.aten.native_layer_norm(x, fn.normalized_shape, fn.weight, fn.bias, fn.eps)
        torch.testing.assert_close(mean, want_mean.reshape(-1), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(rstd, want_rstd.reshape(-1), rtol=1e-5, atol=1e-6)
    else:
        y = fn(x)
        assert mean is None and rstd is None
    mask = kernels.keep_mask(seed, tuple(x.shape), p, x.device) / (1 - p) if p else torch.ones_like(x)
    torch.testing.assert_close(operand[:, :width], y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xa, (y * mask) @ lora_a.t(), rtol=1e-5, atol=1e-4)
    assert torch.equal(operand[:, width:], xa)


@pytest.mark.parametrize('name, out_features', [('layernorm', 144), ('gelu', 24)])  # qkv-like, fc2-like
@pytest.mark.parametrize('p', [0.0, 0.25])
def test_layer_with_the_fn_kernel_equals_torch_fn_and_cast(kernels, monkeypatch, name, out_features, p):
    fn = _function(name)
    operands = _spy(monkeypatch, kernels, 'fn_xa')
    fused = _layer_outputs(fn, out_features, p)
    assert operands, 'the kernel did not make the operand'
    monkeypatch.setattr(LF, '_fn_kernel_args', lambda *args: None)  # torch's function (and cast), then the layer
    for got, want in zip(fused, _layer_outputs(fn, out_features, p)):  # a norm's statistics differ by float32
        assert (got - want).norm() <= 1e-6 * want.norm()  # rounding, amplified where backward's terms cancel


@pytest.mark.parametrize('width', [48, 200])
def test_dx_kernel_applies_the_gelu_backward(kernels, width):
    torch.manual_seed(0)
    grad, h = torch.randn(70, width), torch.randn(70, width) * 2
    g, lora_a, seed = torch.randn(70, 5), torch.randn(5, width), torch.tensor([13])
    mask = kernels.keep_mask(seed, (70, width), 0.25, h.device) / 0.75
    want = torch.ops.aten.gelu_backward(grad + mask * (g @ lora_a), h)
    got = kernels.add_dropout_grad_x(grad.clone(), g, lora_a, seed, 0.25, gelu_input=h)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_layer_after_gelu_gets_its_input_gradient_from_the_dx_kernel(kernels, monkeypatch):
    applies = _spy(monkeypatch, LF, '_gelu_in_kernel')
    fused = _layer_outputs(nn.GELU(), 24, 0.25)  # fc2-like: 48 -> 24
    assert applies == [True]
    monkeypatch.setattr(LF, '_gelu_in_kernel', lambda *args: False)  # torch's gelu_backward after the kernel
    for got, want in zip(fused, _layer_outputs(nn.GELU(), 24, 0.25)):  # GELU's slope cancels near its minimum:
        assert (got - want).norm() <= 1e-6 * want.norm()  # compare norms


def test_fn_kernel_is_not_used_beyond_float32_precision_or_int32_offsets(kernels, monkeypatch):
    operands = _spy(monkeypatch, kernels, 'fn_xa')
    norm = nn.LayerNorm(48, dtype=torch.float64).requires_grad_(False)
    x = torch.randn(2, 40, 48, dtype=torch.float64)
    LF.lora_linear(x, torch.randn(144, 48, dtype=torch.float64), None, torch.randn(4, 48, dtype=torch.float64),
                   torch.randn(144, 4, dtype=torch.float64), 2.0, input_fn=norm)
    assert operands == []  # the kernel computes in float32: float64 keeps torch's norm
    rows = (2 ** 31 - 1) // 64  # an (N, 64) input within int32 offsets, its (N, 64 + 16) operand beyond them
    assert LF.kernel_applies(torch.zeros(1, 1).expand(rows, 64), 0)
    assert not LF.kernel_applies(torch.zeros(1, 1).expand(rows, 64), 16)
