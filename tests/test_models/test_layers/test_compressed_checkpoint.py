"""The memory-saving checkpoint: exact forward, input stored in bf16/fp8, backward from the stored input."""
import pytest
import torch
from torch import nn

from opentad_lora.models.layers import checkpoint_call
from opentad_lora.models.layers.compressed_checkpoint import compress, decompress


class _Block(nn.Module):
    """A residual block with dropout, so the recomputation must replay forward's random draws."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.fc1, self.fc2, self.drop = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim), nn.Dropout(0.3)

    def forward(self, x, scale):
        return x + self.fc2(self.drop(torch.relu(self.fc1(x)))) * scale


def _run(block, x, storage, enabled=True):
    torch.manual_seed(5)
    out = checkpoint_call(block, x, 0.5, enabled=enabled, storage=storage)
    out.square().sum().backward()
    return out.detach(), x.grad, [p.grad.clone() for p in block.parameters()]


@pytest.mark.parametrize('storage', ['bf16', 'fp8'])
def test_forward_is_exact(storage):
    torch.manual_seed(0)
    block, x = _Block(), torch.randn(4, 10, 16)
    plain = _run(block, x.clone().requires_grad_(), None, enabled=False)[0]
    block.zero_grad()
    compressed = _run(block, x.clone().requires_grad_(), storage)[0]
    assert torch.equal(compressed, plain)


def test_bf16_storage_of_a_bf16_exact_input_gives_exact_gradients():
    """An input already representable in bf16 is stored losslessly, so every gradient equals the plain one: this
    checks the recomputation itself (same dropout draws, parameters' grads accumulated, input grad returned)."""
    torch.manual_seed(0)
    block = _Block()
    x = torch.randn(4, 10, 16).bfloat16().float()
    _, gx_plain, gp_plain = _run(block, x.clone().requires_grad_(), None, enabled=False)
    block.zero_grad()
    _, gx, gp = _run(block, x.clone().requires_grad_(), 'bf16')
    torch.testing.assert_close(gx, gx_plain, rtol=1e-6, atol=1e-6)
    for got, want in zip(gp, gp_plain):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_gradients_from_a_compressed_input_are_close_to_exact():
    """Gradients are taken at the stored input: off by about its rounding (bf16 ~0.4%, fp8 e4m3 a few %)."""
    torch.manual_seed(0)
    block = _Block()
    x = torch.randn(8, 32, 16)
    exact = _run(block, x.clone().requires_grad_(), None, enabled=False)
    errors = {}
    for storage in ('bf16', 'fp8'):
        block.zero_grad()
        got = _run(block, x.clone().requires_grad_(), storage)
        errors[storage] = max(((g - w).norm() / w.norm()).item()
                              for g, w in zip([got[1], *got[2]], [exact[1], *exact[2]]))
    assert 0 < errors['bf16'] < 0.01 and errors['bf16'] < errors['fp8'] < 0.1


def test_parameters_get_gradients_when_the_input_needs_none():
    torch.manual_seed(0)
    block = _Block()
    x = torch.randn(4, 10, 16)  # e.g. the output of a frozen patch embedding
    out = checkpoint_call(block, x, 1.0, storage='fp8')
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in block.parameters())


@pytest.mark.parametrize('storage, bytes_per_value', [('bf16', 2), ('fp8', 1)])
def test_saved_input_is_compressed(storage, bytes_per_value):
    x = torch.randn(64, 128, requires_grad=True)
    sizes = []

    def pack(tensor):
        sizes.append(tensor.untyped_storage().nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        checkpoint_call(_Block(128), x, 1.0, storage=storage)
    scale_bytes = 64 * 4 if storage == 'fp8' else 0
    assert sum(sizes) == x.numel() * bytes_per_value + scale_bytes


def test_fp8_round_trip_error_is_within_e4m3_precision():
    torch.manual_seed(0)
    x = torch.randn(32, 256) * torch.logspace(-3, 3, 32)[:, None]  # rows of very different magnitude
    packed, scale = compress(x, 'fp8')
    back = decompress(packed, scale, torch.float32)
    row_max = x.abs().amax(-1, keepdim=True)
    # e4m3: 3 mantissa bits (relative error <= 2^-4) above the subnormal range, which starts 2^-6 below the max/448
    assert ((back - x).abs() <= x.abs() / 16 + row_max * 2.0 ** -9 / 448 * 8).all()
    assert packed.dtype == torch.float8_e4m3fn and scale.shape == (32, 1)


def test_unknown_storage_is_refused():
    with pytest.raises(ValueError, match='checkpoint storage'):
        checkpoint_call(_Block(), torch.randn(2, 16, requires_grad=True), 1.0, storage='int4')
