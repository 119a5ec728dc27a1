"""LoRA dropout fused into the rank-``r`` products (Triton): the mask is made in registers, never in memory.

With dropout, the fused LoRA function otherwise draws ``native_dropout`` over the whole ``(N, K)`` input three times
a step (forward, checkpoint recomputation, backward), writes the dropped copy and the mask each time, and in backward
builds ``(g @ A) * mask`` as one more ``(N, K)`` tensor: on AdaTAD's long-video blocks that traffic was ~20 % of the
step (benchmarks/RESULTS.md). These kernels compute the three products that need the mask straight from ``x``:

* ``xa = dropout(x) @ A.T`` (forward), ``dA = g.T @ dropout(x)`` (backward) read ``x`` once and write rank-r
  results only;
* ``dx += mask * (g @ A) / (1 - p)`` adds the low-rank part of the input gradient in place, tile by tile.

Element ``(n, k)`` of a 2-D input is kept when ``tl.rand(seed, n * K + k) > p`` (Philox, keyed by a seed drawn from
torch's generator on the input's device, so activation checkpointing, which restores that generator, recomputes the
same mask). The mask has the same distribution as ``torch.nn.functional.dropout``'s but other numbers; the CPU path
keeps torch's dropout (PEFT's numbers). Tests run these kernels on CPU through Triton's interpreter
(``TRITON_INTERPRET=1``) against plain torch maths on :func:`keep_mask`.
"""
import torch
import triton
import triton.language as tl
from torch import Tensor

# Triton chooses between compiling and interpreting when a kernel is decorated, i.e. when this module is first
# imported: :mod:`.functional` imports it only where it applies (:func:`.functional.fused_dropout_applies`).


@triton.jit
def _keep(seed, rows, cols, K, p):
    return tl.rand(seed, rows[:, None] * K + cols[None, :]) > p


@triton.jit
def _xa_kernel(x_ptr, a_ptr, out_ptr, seed_ptr, N, K, R, p, scale,
               RP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    ranks = tl.arange(0, RP)
    seed = tl.load(seed_ptr)
    acc = tl.zeros((BLOCK_N, RP), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        inside = (rows[:, None] < N) & (cols[None, :] < K)
        x = tl.load(x_ptr + rows[:, None] * K + cols[None, :], mask=inside, other=0.0)
        x = tl.where(_keep(seed, rows, cols, K, p), x, 0.0)
        a = tl.load(a_ptr + ranks[None, :] * K + cols[:, None], mask=(cols[:, None] < K) & (ranks[None, :] < R),
                    other=0.0)  # A.T tile (BLOCK_K, RP)
        acc += tl.dot(x, a)
    out = (acc * scale).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + rows[:, None] * R + ranks[None, :], out, mask=(rows[:, None] < N) & (ranks[None, :] < R))


@triton.jit
def _grad_a_kernel(g_ptr, x_ptr, out_ptr, seed_ptr, N, K, R, p, scale, SPLIT,
                   RP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    cols = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    split = tl.program_id(1)
    ranks = tl.arange(0, RP)
    seed = tl.load(seed_ptr)
    acc = tl.zeros((RP, BLOCK_K), dtype=tl.float32)
    for n0 in range(split * BLOCK_N, N, SPLIT * BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N)
        inside = (rows[:, None] < N) & (cols[None, :] < K)
        x = tl.load(x_ptr + rows[:, None] * K + cols[None, :], mask=inside, other=0.0)
        x = tl.where(_keep(seed, rows, cols, K, p), x, 0.0)
        g_t = tl.load(g_ptr + rows[None, :] * R + ranks[:, None], mask=(rows[None, :] < N) & (ranks[:, None] < R),
                      other=0.0)  # g.T tile (RP, BLOCK_N)
        acc += tl.dot(g_t, x)
    tl.store(out_ptr + split * RP * K + ranks[:, None] * K + cols[None, :], acc * scale,
             mask=cols[None, :] < K)


@triton.jit
def _add_grad_x_kernel(dx_ptr, g_ptr, a_ptr, seed_ptr, N, K, R, p, scale,
                       RP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    ranks = tl.arange(0, RP)
    seed = tl.load(seed_ptr)
    g = tl.load(g_ptr + rows[:, None] * R + ranks[None, :], mask=(rows[:, None] < N) & (ranks[None, :] < R),
                other=0.0)
    a = tl.load(a_ptr + ranks[:, None] * K + cols[None, :], mask=(ranks[:, None] < R) & (cols[None, :] < K),
                other=0.0)
    low_rank = tl.where(_keep(seed, rows, cols, K, p), tl.dot(g, a) * scale, 0.0)
    inside = (rows[:, None] < N) & (cols[None, :] < K)
    offsets = rows[:, None] * K + cols[None, :]
    dx = tl.load(dx_ptr + offsets, mask=inside, other=0.0)
    tl.store(dx_ptr + offsets, (dx.to(tl.float32) + low_rank).to(dx_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _mask_kernel(out_ptr, seed_ptr, N, K, p, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    keep = _keep(tl.load(seed_ptr), rows, cols, K, p)
    tl.store(out_ptr + rows[:, None] * K + cols[None, :], keep.to(tl.int8),
             mask=(rows[:, None] < N) & (cols[None, :] < K))


def _padded_rank(rank: int) -> int:
    return max(16, 1 << (rank - 1).bit_length())  # tl.dot wants power-of-two tiles of at least 16


def dropout_xa(x2d: Tensor, lora_a: Tensor, seed: Tensor, p: float) -> Tensor:
    """``dropout(x) @ A.T`` for a contiguous ``(N, K)`` ``x`` and ``A`` of shape ``(r, K)``, in ``x``'s dtype."""
    n, width = x2d.shape
    rank = lora_a.shape[0]
    out = torch.empty(n, rank, device=x2d.device, dtype=x2d.dtype)
    block_n = 64
    _xa_kernel[(triton.cdiv(n, block_n),)](x2d, lora_a.contiguous(), out, seed, n, width, rank, p,
                                           1.0 / (1.0 - p), RP=_padded_rank(rank), BLOCK_N=block_n, BLOCK_K=64)
    return out


def dropout_grad_a(g: Tensor, x2d: Tensor, seed: Tensor, p: float) -> Tensor:
    """``g.T @ dropout(x)`` (float32, ``(r, K)``) with the mask of :func:`dropout_xa` for the same ``seed``."""
    n, width = x2d.shape
    rank = g.shape[1]
    block_n, block_k = 64, 64
    col_blocks = triton.cdiv(width, block_k)
    split = max(1, min(triton.cdiv(n, block_n), triton.cdiv(1024, col_blocks)))  # enough programs to fill the GPU
    partial = torch.empty(split, _padded_rank(rank), width, device=x2d.device, dtype=torch.float32)
    _grad_a_kernel[(col_blocks, split)](g.contiguous(), x2d, partial, seed, n, width, rank, p, 1.0 / (1.0 - p),
                                        split, RP=_padded_rank(rank), BLOCK_N=block_n, BLOCK_K=block_k)
    return partial.sum(0)[:rank]


def add_dropout_grad_x(grad_x: Tensor, g: Tensor, lora_a: Tensor, seed: Tensor, p: float) -> Tensor:
    """``grad_x += (dropout mask) * (g @ A) / (1 - p)`` in place, for a contiguous ``(N, K)`` ``grad_x``."""
    n, width = grad_x.shape
    rank = g.shape[1]
    block_n, block_k = 64, 64
    _add_grad_x_kernel[(triton.cdiv(n, block_n), triton.cdiv(width, block_k))](
        grad_x, g.contiguous(), lora_a.contiguous(), seed, n, width, rank, p, 1.0 / (1.0 - p),
        RP=_padded_rank(rank), BLOCK_N=block_n, BLOCK_K=block_k)
    return grad_x


def keep_mask(seed: Tensor, shape: tuple, p: float, device: torch.device) -> Tensor:
    """The boolean keep-mask the kernels use for a ``(N, K)`` input and ``seed`` (for tests and parity checks)."""
    n, width = shape
    out = torch.empty(n, width, device=device, dtype=torch.int8)
    _mask_kernel[(triton.cdiv(n, 64), triton.cdiv(width, 64))](out, seed, n, width, p, BLOCK_N=64, BLOCK_K=64)
    return out.bool()
