"""LoRA dropout inside the rank-r products (Triton kernels, run here by Triton's CPU interpreter): the same maths as
plain torch on the kernels' own mask, nothing (N, K) kept, the same mask again under activation checkpointing."""
import pytest
import torch
from torch.utils.checkpoint import checkpoint

pytest.importorskip('triton', reason='the kernels need Triton (requirements/tests.txt installs it)')

from opentad_lora.peft import functional as LF  # noqa: E402
from opentad_lora.peft import lora_dropout  # noqa: E402


@pytest.fixture
def kernels(monkeypatch):
    monkeypatch.setenv('OPENTAD_LORA_DROPOUT_KERNEL', 'interpret')  # CPU tensors too (conftest: TRITON_INTERPRET=1)
    monkeypatch.setattr(LF, 'PLAIN_MAX_ROWS', 0)
    from opentad_lora.peft import dropout_kernels
    return dropout_kernels


@pytest.mark.parametrize('rows, width, rank', [(100, 70, 4), (64, 128, 20)])
def test_kernels_equal_torch_maths_on_their_mask(kernels, rows, width, rank):
    torch.manual_seed(0)
    p = 0.3
    x, a, g = torch.randn(rows, width), torch.randn(rank, width), torch.randn(rows, rank)
    seed = torch.tensor([1234])
    mask = kernels.keep_mask(seed, (rows, width), p, x.device)
    assert abs(mask.float().mean().item() - (1 - p)) < 0.03
    dropped = x * mask / (1 - p)
    torch.testing.assert_close(kernels.dropout_xa(x, a, seed, p), dropped @ a.t(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(kernels.grad_a(g, x, seed, p), g.t() @ dropped, rtol=1e-5, atol=1e-4)
    dx = torch.randn(rows, width)
    torch.testing.assert_close(kernels.add_dropout_grad_x(dx.clone(), g, a, seed, p),
                               dx + (g @ a) * mask / (1 - p), rtol=1e-5, atol=1e-4)
    assert not torch.equal(kernels.keep_mask(torch.tensor([1235]), (rows, width), p, x.device), mask)


def test_xa_kernel_reads_rows_of_a_wider_buffer(kernels):
    """A wide layer's input lives in the first columns of its ``[x | xA]`` operand: strided rows, same result."""
    torch.manual_seed(0)
    buffer, a, seed = torch.randn(90, 70 + 6), torch.randn(6, 70), torch.tensor([99])
    strided = buffer[:, :70]
    assert not strided.is_contiguous()
    torch.testing.assert_close(kernels.dropout_xa(strided, a, seed, 0.2),
                               kernels.dropout_xa(strided.contiguous(), a, seed, 0.2), rtol=0, atol=0)


def _tensors(out_features):
    torch.manual_seed(1)
    x = torch.randn(2, 40, 32, requires_grad=True)
    weight, bias = torch.randn(out_features, 32), torch.randn(out_features)
    lora_a = torch.randn(4, 32, requires_grad=True)
    lora_b = torch.randn(out_features, 4, requires_grad=True)
    return x, weight, bias, lora_a, lora_b


def _grads(out, tensors):
    return torch.autograd.grad((out ** 2).sum(), [t for t in tensors if t.requires_grad])


@pytest.mark.parametrize('out_features', [24, 96])  # the addmm_ path and the wide [x | xA] path
def test_fused_layer_with_kernel_dropout_equals_the_reference_on_the_kernels_mask(kernels, out_features):
    x, weight, bias, lora_a, lora_b = _tensors(out_features)
    torch.manual_seed(5)
    out = LF.lora_linear(x, weight, bias, lora_a, lora_b, scaling=2.0, dropout_p=0.25, training=True)
    assert out.grad_fn.dropout_way == 'kernel'
    torch.manual_seed(5)  # the seed the layer drew
    seed = torch.randint(0, 2 ** 31 - 1, (1,), dtype=torch.int64)
    mask = kernels.keep_mask(seed, (80, 32), 0.25, x.device).reshape(x.shape)
    ref = torch.nn.functional.linear(x, weight, bias) + (x * mask / 0.75) @ lora_a.t() @ lora_b.t() * 2.0
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)
    for got, want in zip(_grads(out, (x, lora_a, lora_b)), _grads(ref, (x, lora_a, lora_b))):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)  # float32 sums in another order


def test_kernel_dropout_keeps_a_seed_only_and_checkpointing_recomputes_the_same_mask(kernels):
    x, weight, bias, lora_a, lora_b = _tensors(24)
    out = LF.lora_linear(x, weight, bias, lora_a, lora_b, scaling=1.0, dropout_p=0.5, training=True)
    saved = [t for t in out.grad_fn.saved_tensors if t is not None and t.numel() in (1, x.numel())]
    assert sorted(t.numel() for t in saved) == [1, x.numel()]  # the seed and x itself, no mask, no dropped copy

    def run(use_checkpoint):
        torch.manual_seed(9)
        fn = lambda inp: LF.lora_linear(inp, weight, bias, lora_a, lora_b, scaling=1.0, dropout_p=0.5,  # noqa: E731
                                        training=True)
        out = checkpoint(fn, x, use_reentrant=False) if use_checkpoint else fn(x)
        return (out, *_grads(out, (x, lora_a, lora_b)))

    for got, want in zip(run(True), run(False)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_torch_dropout_is_kept_on_request(kernels, monkeypatch):
    monkeypatch.setenv('OPENTAD_LORA_DROPOUT_KERNEL', 'torch')
    x, weight, bias, lora_a, lora_b = _tensors(24)
    torch.manual_seed(3)
    out = LF.lora_linear(x, weight, bias, lora_a, lora_b, scaling=1.0, dropout_p=0.5, training=True)
    assert out.grad_fn.dropout_way == 'redraw'
    torch.manual_seed(3)
    torch.testing.assert_close(out, LF.lora_linear_reference(x, weight, bias, lora_a, lora_b, scaling=1.0,
                                                             dropout_p=0.5, training=True))
    assert not lora_dropout.kernel_applies(x.reshape(-1, 32), 4)


def test_a_misspelt_kernel_choice_is_refused_naming_the_variable(monkeypatch):
    monkeypatch.setenv('OPENTAD_LORA_DROPOUT_KERNEL', 'tourch')
    with pytest.raises(ValueError, match="OPENTAD_LORA_DROPOUT_KERNEL='tourch'"):
        lora_dropout.kernel_applies(torch.randn(4, 8), 4)
