"""LoRA dropout fused into the rank-``r`` products (Triton): the mask is made in registers, never in memory.

With dropout, the fused LoRA function otherwise draws ``native_dropout`` over the whole ``(N, K)`` input three times
a step (forward, checkpoint recomputation, backward), writes the dropped copy and the mask each time, and in backward
builds ``(g @ A) * mask`` as one more ``(N, K)`` tensor: on AdaTAD's long-video blocks that traffic was ~20 % of the
step (benchmarks/RESULTS.md). These kernels compute the three products that need the mask straight from ``x``:

* ``xa = dropout(x) @ A.T`` (forward), ``dA = g.T @ dropout(x)`` (backward) read ``x`` once and write rank-r
  results only;
* ``dx += mask * (g @ A) / (1 - p)`` adds the low-rank part of the input gradient in place, tile by tile.

``fn_xa`` applies a layer's input function (LayerNorm or exact GELU, :mod:`.input_fn`) and writes
``[fn(x) | dropout(fn(x)) @ A.T]``, the K-concatenated operand of its GEMM, in one pass (with or without dropout):
torch would write ``fn(x)`` (in float32 for a norm under autocast), cast it into the operand, read it again for
``xa``, and a layer narrower than its input would then add ``xa @ (sB).T`` to its output in another pass.

``dA`` also serves layers without dropout that apply their input function (:mod:`.input_fn`): it computes a
LayerNorm or GELU of the saved input in registers (a :class:`.input_fn.Prologue`), where backward would otherwise
write that function's output (float32 for a LayerNorm under autocast), cast it and read it back: on AdaTAD's blocks
several passes over the widest activations per layer.

The mask is Philox (``tl.randint4x``) keyed by a seed drawn from torch's generator on the input's device, so
activation checkpointing, which restores that generator, recomputes the same mask; each call gives eight 16-bit
draws (element kept when its draw >= ``round(p * 2**16)``: ``p`` is rounded to a multiple of 2**-16). The mask has
the distribution of ``torch.nn.functional.dropout``'s but other numbers; the CPU path keeps torch's dropout (PEFT's
numbers). Tests run these kernels on CPU through Triton's interpreter
(``TRITON_INTERPRET=1``) against plain torch maths on :func:`keep_mask`.
"""
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.runtime.interpreter import InterpretedFunction

from .input_fn import Prologue

# Triton chooses between compiling and interpreting when a kernel is decorated, i.e. when this module is first
# imported: :mod:`.functional` imports it only where it applies (:func:`.functional.fused_dropout_applies`).


TILE_K = 64  # every kernel walks the input's columns in tiles of 64, the unit in which the mask is defined


@triton.jit
def _halves(word):
    bits = word.to(tl.uint32, bitcast=True)
    return tl.join(bits & 0xFFFF, bits >> 16)


@triton.jit
def _keep(seed, rows, k0, KG, threshold, BLOCK_N: tl.constexpr):
    """Keep-mask of the (BLOCK_N, 64) tile at columns k0..k0+63: one Philox call per 8 elements (four 32-bit words,
    two 16-bit halves each; torch's dropout also draws four values per call), kept when the half >= threshold."""
    w0, w1, w2, w3 = tl.randint4x(seed, rows[:, None] * KG + (k0 // 8 + tl.arange(0, 8))[None, :])
    tile = tl.join(tl.join(_halves(w0), _halves(w1)), tl.join(_halves(w2), _halves(w3)))  # (BLOCK_N, 8, 2, 2, 2)
    return tl.reshape(tile, (BLOCK_N, 64)) >= threshold


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    if IEEE:  # float32 inputs: full precision, as torch's matmul by default (not TF32)
        return tl.dot(a, b, input_precision='ieee')
    return tl.dot(a, b)


@triton.jit
def _xa_kernel(x_ptr, a_ptr, out_ptr, seed_ptr, N, K, SX, KG, R, threshold, scale,
               RP: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    ranks = tl.arange(0, RP)
    seed = tl.load(seed_ptr)
    acc = tl.zeros((BLOCK_N, RP), dtype=tl.float32)
    for k0 in range(0, K, 64):
        cols = k0 + tl.arange(0, 64)
        x = tl.load(x_ptr + rows[:, None] * SX + cols[None, :], mask=(rows[:, None] < N) & (cols[None, :] < K),
                    other=0.0)
        x = tl.where(_keep(seed, rows, k0, KG, threshold, BLOCK_N), x, 0.0)
        a = tl.load(a_ptr + ranks[None, :] * K + cols[:, None], mask=(cols[:, None] < K) & (ranks[None, :] < R),
                    other=0.0)  # A.T tile (64, RP)
        acc += _dot(x, a, IEEE)
    out = (acc * scale).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + rows[:, None] * R + ranks[None, :], out, mask=(rows[:, None] < N) & (ranks[None, :] < R))


# Triton's interpreter casts float32 to bfloat16 by truncation; compiled kernels round to nearest even in hardware,
# which the rounding by hand equals at ~12 % more time per kernel (measured on an H200). Whether this module's kernels
# are interpreted was decided when they were decorated (``TRITON_INTERPRET`` as Triton reads it).
_INTERPRETED: tl.constexpr = tl.constexpr(isinstance(_halves, InterpretedFunction))


@triton.jit
def _to_element(value, dtype: tl.constexpr):
    """``value`` (float32) rounded to ``dtype``, to nearest even (bfloat16 by hand where the interpreter runs)."""
    if dtype == tl.bfloat16 and _INTERPRETED:
        bits = value.to(tl.int32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536  # a float32 that bfloat16 holds exactly
        value = tl.where(value != value, value, rounded.to(tl.float32, bitcast=True))  # NaN stays NaN
    return value.to(dtype)


@triton.jit
def _grad_a_kernel(g_ptr, x_ptr, out_ptr, seed_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, N, K, KG, R, threshold, scale,
                   SPLIT, RP: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr, DROPOUT: tl.constexpr,
                   PROLOGUE: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr):
    k0 = tl.program_id(0) * 64
    cols = k0 + tl.arange(0, 64)
    split = tl.program_id(1)
    ranks = tl.arange(0, RP)
    if DROPOUT:
        seed = tl.load(seed_ptr)
    if PROLOGUE == 1 and HAS_W:
        w = tl.load(w_ptr + cols, mask=cols < K, other=0.0).to(tl.float32)
    if PROLOGUE == 1 and HAS_B:
        b = tl.load(b_ptr + cols, mask=cols < K, other=0.0).to(tl.float32)
    acc = tl.zeros((RP, 64), dtype=tl.float32)
    for n0 in range(split * BLOCK_N, N, SPLIT * BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N)
        x = tl.load(x_ptr + rows[:, None] * K + cols[None, :], mask=(rows[:, None] < N) & (cols[None, :] < K),
                    other=0.0)
        if PROLOGUE == 1:  # LayerNorm with forward's statistics, in the order of torch's CUDA kernel
            mean = tl.load(mean_ptr + rows, mask=rows < N, other=0.0)
            rstd = tl.load(rstd_ptr + rows, mask=rows < N, other=0.0)
            y = rstd[:, None] * (x.to(tl.float32) - mean[:, None])
            if HAS_W:
                y = w[None, :] * y
            if HAS_B:
                y = y + b[None, :]
            x = _to_element(y, g_ptr.dtype.element_ty)
        elif PROLOGUE == 2:  # exact GELU, as torch computes it
            y = x.to(tl.float32)
            x = _to_element(y * 0.5 * (1.0 + tl.erf(y * 0.7071067811865476)), g_ptr.dtype.element_ty)
        if DROPOUT:
            x = tl.where(_keep(seed, rows, k0, KG, threshold, BLOCK_N), x, 0.0)
        g_t = tl.load(g_ptr + rows[None, :] * R + ranks[:, None], mask=(rows[None, :] < N) & (ranks[:, None] < R),
                      other=0.0)  # g.T tile (RP, BLOCK_N)
        acc += _dot(g_t, x, IEEE)
    tl.store(out_ptr + split * RP * K + ranks[:, None] * K + cols[None, :], acc * scale, mask=cols[None, :] < K)


@triton.jit
def _add_grad_x_kernel(dx_ptr, g_ptr, a_ptr, seed_ptr, h_ptr, N, K, KG, R, threshold, scale,
                       RP: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr, GELU: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k0 = tl.program_id(1) * 64
    cols = k0 + tl.arange(0, 64)
    ranks = tl.arange(0, RP)
    g = tl.load(g_ptr + rows[:, None] * R + ranks[None, :], mask=(rows[:, None] < N) & (ranks[None, :] < R),
                other=0.0)
    a = tl.load(a_ptr + ranks[:, None] * K + cols[None, :], mask=(ranks[:, None] < R) & (cols[None, :] < K),
                other=0.0)
    keep = _keep(tl.load(seed_ptr), rows, k0, KG, threshold, BLOCK_N)
    low_rank = tl.where(keep, _dot(g, a, IEEE) * scale, 0.0)
    inside = (rows[:, None] < N) & (cols[None, :] < K)
    offsets = rows[:, None] * K + cols[None, :]
    dx = tl.load(dx_ptr + offsets, mask=inside, other=0.0).to(tl.float32) + low_rank
    if GELU:  # then the exact GELU's backward at its input h, as torch computes it from the rounded sum
        dx = _to_element(dx, dx_ptr.dtype.element_ty).to(tl.float32)
        h = tl.load(h_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
        cdf = 0.5 * (1.0 + tl.erf(h * 0.7071067811865476))
        pdf = tl.exp(-0.5 * h * h) * 0.3989422804014327  # 1 / sqrt(2 pi)
        dx = dx * (cdf + h * pdf)
    tl.store(dx_ptr + offsets, dx.to(dx_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _fn_xa_kernel(x_ptr, w_ptr, b_ptr, a_ptr, seed_ptr, op_ptr, xa_ptr, mean_ptr, rstd_ptr, N, K, SX, SO, KG, R,
                  threshold, scale, eps, RP: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
                  DROPOUT: tl.constexpr, FN: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    ranks = tl.arange(0, RP)
    if FN == 1:  # LayerNorm: each row's mean and sum of squared deviations, tile by tile, merged as Chan et al.
        mean = tl.zeros((BLOCK_N,), dtype=tl.float32)
        m2 = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for k0 in range(0, K, 64):
            cols = k0 + tl.arange(0, 64)
            inside = (rows[:, None] < N) & (cols[None, :] < K)
            x = tl.load(x_ptr + rows[:, None] * SX + cols[None, :], mask=inside, other=0.0).to(tl.float32)
            count = tl.sum((cols < K).to(tl.float32), 0)
            tile_mean = tl.sum(x, 1) / count
            deviation = tl.where(inside, x - tile_mean[:, None], 0.0)
            delta = tile_mean - mean
            seen = k0 * 1.0
            mean += delta * (count / (seen + count))
            m2 += tl.sum(deviation * deviation, 1) + delta * delta * (seen * count / (seen + count))
        rstd = 1.0 / tl.sqrt(m2 / K + eps)
        tl.store(mean_ptr + rows, mean, mask=rows < N)
        tl.store(rstd_ptr + rows, rstd, mask=rows < N)
    else:  # GELU: erf and the product in one loop ran at a quarter of the memory's speed on an H200 (212
        # registers per thread: few programs per SM), so the function is written first and read back for the product
        for k0 in range(0, K, 128):
            cols = k0 + tl.arange(0, 128)
            inside = (rows[:, None] < N) & (cols[None, :] < K)
            y = tl.load(x_ptr + rows[:, None] * SX + cols[None, :], mask=inside, other=0.0).to(tl.float32)
            y = _to_element(y * 0.5 * (1.0 + tl.erf(y * 0.7071067811865476)), op_ptr.dtype.element_ty)
            tl.store(op_ptr + rows[:, None] * SO + cols[None, :], y, mask=inside)
        tl.debug_barrier()  # the program's stores are visible to all its threads
    # The function's output, stored in the operand's dtype (GELU: read back), and its rank-r product with A
    if DROPOUT:
        seed = tl.load(seed_ptr)
    acc = tl.zeros((BLOCK_N, RP), dtype=tl.float32)
    for k0 in range(0, K, 64):
        cols = k0 + tl.arange(0, 64)
        inside = (rows[:, None] < N) & (cols[None, :] < K)
        if FN == 1:  # as the dA kernel's prologue computes them
            y = rstd[:, None] * (tl.load(x_ptr + rows[:, None] * SX + cols[None, :], mask=inside, other=0.0)
                                 .to(tl.float32) - mean[:, None])
            if HAS_W:
                y = tl.load(w_ptr + cols, mask=cols < K, other=0.0).to(tl.float32)[None, :] * y
            if HAS_B:
                y = y + tl.load(b_ptr + cols, mask=cols < K, other=0.0).to(tl.float32)[None, :]
            y = _to_element(y, op_ptr.dtype.element_ty)  # beyond K, A's tile is zero; beyond N, nothing is stored
            tl.store(op_ptr + rows[:, None] * SO + cols[None, :], y, mask=inside)
        else:
            y = tl.load(op_ptr + rows[:, None] * SO + cols[None, :], mask=inside, other=0.0)
        if DROPOUT:
            y = tl.where(_keep(seed, rows, k0, KG, threshold, BLOCK_N), y, 0.0)
        a = tl.load(a_ptr + ranks[None, :] * K + cols[:, None], mask=(cols[:, None] < K) & (ranks[None, :] < R),
                    other=0.0)  # A.T tile (64, RP)
        acc += _dot(y, a, IEEE)
    xa = (acc * scale).to(op_ptr.dtype.element_ty)
    inside = (rows[:, None] < N) & (ranks[None, :] < R)
    tl.store(xa_ptr + rows[:, None] * R + ranks[None, :], xa, mask=inside)
    tl.store(op_ptr + rows[:, None] * SO + K + ranks[None, :], xa, mask=inside)


@triton.jit
def _mask_kernel(out_ptr, seed_ptr, N, K, KG, threshold, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k0 = tl.program_id(1) * 64
    cols = k0 + tl.arange(0, 64)
    keep = _keep(tl.load(seed_ptr), rows, k0, KG, threshold, BLOCK_N)
    tl.store(out_ptr + rows[:, None] * K + cols[None, :], keep.to(tl.int8),
             mask=(rows[:, None] < N) & (cols[None, :] < K))


def new_seed(device: torch.device) -> Tensor:
    """The Philox seed of one layer's mask, drawn from torch's generator on ``device`` (no host sync); activation
    checkpointing restores that generator, so a recomputed forward draws the same seed."""
    return torch.randint(0, 2 ** 31 - 1, (1,), device=device, dtype=torch.int64)


def rows(x: Tensor) -> Tensor:
    """``x`` as ``(N, K)`` rows with unit column stride (the row stride may be larger), as the kernels read it."""
    x2d = x.reshape(-1, x.shape[-1])
    return x2d if x2d.stride(-1) == 1 else x2d.contiguous()


def _padded_rank(rank: int) -> int:
    return max(16, 1 << (rank - 1).bit_length())  # tl.dot wants power-of-two tiles of at least 16


def _launch_args(width: int, p: float) -> tuple:
    """Words per row of the mask, the 16-bit keep threshold (p is rounded to a multiple of 2**-16) and the scale."""
    return triton.cdiv(width, 8), round(p * 65536), 1.0 / (1.0 - p)


def dropout_xa(x2d: Tensor, lora_a: Tensor, seed: Tensor, p: float) -> Tensor:
    """``dropout(x) @ A.T`` for an ``(N, K)`` ``x`` with unit column stride and ``A`` of shape ``(r, K)``, in
    ``x``'s dtype."""
    n, width = x2d.shape
    rank = lora_a.shape[0]
    out = torch.empty(n, rank, device=x2d.device, dtype=x2d.dtype)
    words, threshold, scale = _launch_args(width, p)
    _xa_kernel[(triton.cdiv(n, 64),)](x2d, lora_a.contiguous(), out, seed, n, width, x2d.stride(0), words, rank,
                                      threshold, scale, RP=_padded_rank(rank), BLOCK_N=64,
                                      IEEE=x2d.dtype == torch.float32)
    return out


def grad_a(g: Tensor, x2d: Tensor, seed: Optional[Tensor], p: float, prologue: Optional[Prologue] = None) -> Tensor:
    """``g.T @ dropout(fn(x))`` (float32, ``(r, K)``): the mask of :func:`dropout_xa` for the same ``seed`` (no
    dropout when ``seed`` is None), ``fn`` the ``prologue``'s function computed in registers from ``x`` (identity
    when None; ``x`` is then in ``g``'s dtype)."""
    n, width = x2d.shape
    rank = g.shape[1]
    words, threshold, scale = _launch_args(width, p) if seed is not None else (0, 0, 1.0)
    kind, mean, rstd, weight, bias = prologue or (0, None, None, None, None)
    # rows per step, warps, pipeline stages, programs: the fastest on an H200 for ViT-B/H widths with a norm or GELU
    # (benchmarks/RESULTS.md); dropout alone keeps the settings it was measured with
    block_n, warps, stages, programs = {1: (128, 4, 2, 1024), 2: (64, 4, 3, 1024)}.get(kind, (64, 4, 3, 2048))
    col_tiles = triton.cdiv(width, TILE_K)
    split = max(1, min(triton.cdiv(n, block_n), triton.cdiv(programs, col_tiles)))  # enough to fill the GPU
    partial = torch.empty(split, _padded_rank(rank), width, device=x2d.device, dtype=torch.float32)
    unused = partial  # pointers the kernel does not read in this configuration
    _grad_a_kernel[(col_tiles, split)](
        g.contiguous(), x2d, partial, *(unused if t is None else t for t in (seed, mean, rstd, weight, bias)), n, width,
        words, rank, threshold, scale, split, RP=_padded_rank(rank), BLOCK_N=block_n, IEEE=g.dtype == torch.float32,
        DROPOUT=seed is not None, PROLOGUE=kind, HAS_W=weight is not None, HAS_B=bias is not None, num_warps=warps,
        num_stages=stages)
    return partial.sum(0)[:rank]


def fn_xa(x2d: Tensor, prologue: Prologue, eps: float, lora_a: Tensor, seed: Optional[Tensor], p: float,
          dtype: torch.dtype) -> Tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor]]:
    """A layer's input function ``fn`` (the ``prologue``'s LayerNorm, with ``eps``, or exact GELU) of the ``(N, K)``
    ``x2d`` and its LoRA product in one pass: ``[y | xa]`` (``(N, K + r)`` in ``dtype``, the K-concatenated operand
    of the layer's GEMM), ``xa = dropout(y) @ A.T`` (``(N, r)``, the mask of :func:`dropout_xa` for ``seed``; no
    dropout when None) and, for a norm, the float32 per-row ``mean`` and ``rstd``.

    ``y`` is computed in float32 as the dA kernel's prologue computes it and rounded once to ``dtype``, where torch
    writes ``fn(x)`` (a float32 norm under autocast), casts it, and the layer reads it again for ``xa``. A norm's
    statistics are this kernel's own (a stable merge of per-tile moments, not torch's Welford order), within float32
    rounding of torch's; backward uses them, so forward and backward see the same norm."""
    n, width = x2d.shape
    rank = lora_a.shape[0]
    operand = torch.empty(n, width + rank, device=x2d.device, dtype=dtype)
    xa = torch.empty(n, rank, device=x2d.device, dtype=dtype)
    norm = prologue.kind == 1
    mean = torch.empty(n, device=x2d.device, dtype=torch.float32) if norm else None
    rstd = torch.empty_like(mean) if norm else None
    words, threshold, scale = _launch_args(width, p) if seed is not None else (0, 0, 1.0)
    unused = xa  # pointers the kernel does not read in this configuration
    block_n = 32 if norm else 16  # the fastest on an H200 for ViT-B/H widths (benchmarks/RESULTS.md)
    _fn_xa_kernel[(triton.cdiv(n, block_n),)](
        x2d, *(unused if t is None else t for t in (prologue.weight, prologue.bias)), lora_a.contiguous(),
        unused if seed is None else seed, operand, xa,
        *(unused if t is None else t for t in (mean, rstd)), n, width, x2d.stride(0), operand.stride(0), words, rank,
        threshold, scale, eps, RP=_padded_rank(rank), BLOCK_N=block_n, IEEE=dtype == torch.float32,
        DROPOUT=seed is not None, FN=prologue.kind, HAS_W=prologue.weight is not None,
        HAS_B=prologue.bias is not None)
    return operand, xa, mean, rstd


def add_dropout_grad_x(grad_x: Tensor, g: Tensor, lora_a: Tensor, seed: Tensor, p: float,
                       gelu_input: Optional[Tensor] = None) -> Tensor:
    """``grad_x += (dropout mask) * (g @ A) / (1 - p)`` in place, for a contiguous ``(N, K)`` ``grad_x``.

    With ``gelu_input`` (``h``, contiguous, ``grad_x``'s shape and dtype: the layer's input function was an exact
    GELU of ``h``) the result is the gradient of ``h`` instead, ``gelu_backward(grad_x + ..., h)``, in the same pass:
    two passes over the ``(N, K)`` gradient fewer than a separate ``gelu_backward``."""
    n, width = grad_x.shape
    rank = g.shape[1]
    words, threshold, scale = _launch_args(width, p)
    _add_grad_x_kernel[(triton.cdiv(n, 64), triton.cdiv(width, TILE_K))](
        grad_x, g.contiguous(), lora_a.contiguous(), seed, grad_x if gelu_input is None else gelu_input, n, width,
        words, rank, threshold, scale, RP=_padded_rank(rank), BLOCK_N=64, IEEE=grad_x.dtype == torch.float32,
        GELU=gelu_input is not None)
    return grad_x


def keep_mask(seed: Tensor, shape: tuple, p: float, device: torch.device) -> Tensor:
    """The boolean keep-mask the kernels use for a ``(N, K)`` input and ``seed`` (for tests and parity checks)."""
    n, width = shape
    words, threshold, _ = _launch_args(width, p)
    out = torch.empty(n, width, device=device, dtype=torch.int8)
    _mask_kernel[(triton.cdiv(n, 64), triton.cdiv(width, TILE_K))](out, seed, n, width, words, threshold, BLOCK_N=64)
    return out.bool()
