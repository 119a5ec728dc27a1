"""bitsandbytes 4-bit (NF4/FP4) dequantization in one Triton launch, optionally into a strided output view.

bitsandbytes dequantizes a double-quantized weight in three launches, each with Python dispatch on the host: the
nested absmax (``code2[q] * absmax2``), ``absmax += offset`` and the 4-bit op; the fused LoRA function then copies
the result into its ``[W | sB]`` operand. Eager QLoRA steps are bound by the host issuing kernels, so one kernel does
all of it in registers and writes straight into the caller's buffer (e.g. the first ``K`` columns of an ``(O, K +
r)`` operand, any row stride). An even row length (every ViT layer; blocksize >= 64) takes the per-byte kernel:
contiguous packed bytes in, both values of a byte out side by side in 16-byte stores, the absmax read once per 64
values; an odd one the per-element kernel. Both read the code table from global memory (64 bytes, served by L1: one
load per value, where a select chain over 16 entries would cost 15 instructions).

Bit for bit bitsandbytes' ``dequantize_4bit``: each element is ``code[nibble] * absmax[block]`` in float32 rounded
once to the output dtype; a nested absmax is ``code2[q] * absmax2[block2]`` rounded to float32, then ``+ offset``
rounded again (launched with ``enable_fp_fusion=False``, so that Triton does not contract it into one FMA). Packing:
element ``i`` of the flattened weight is in byte ``i // 2``, its high nibble when ``i`` is even; block ``i //
blocksize``. Tests run it on CPU through Triton's interpreter (``TRITON_INTERPRET=1``).
"""
import math
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.runtime.interpreter import InterpretedFunction

from .dropout_kernels import _to_element  # float32 to a 16-bit dtype, round to nearest even (also interpreted)
from .quant import code_table

# Triton chooses between compiling and interpreting when a kernel is decorated, i.e. when this module is first
# imported: :mod:`.quant` imports it only where it applies.

BLOCK_R, BLOCK_C = 16, 128  # odd row length: 2048 elements per program, in rows of 128 contiguous elements
CHUNK = 64  # even row length: elements per chunk (32 packed bytes), whose absmax is read once or twice
CHUNKS_PER_PROGRAM = 64  # even row length: 2048 packed bytes (16 per thread) and 4096 values per program
# no FMA contraction of the nested absmax's product and offset (Triton's default may contract them)
LAUNCH_OPTIONS = dict(num_warps=4, enable_fp_fusion=False)


@triton.jit
def _scale(absmax_ptr, absmax2_ptr, code2_ptr, offset_ptr, block, mask, BLOCKSIZE2: tl.constexpr,
           NESTED: tl.constexpr):
    """The float32 absmax of ``block``: bitsandbytes' dequantize_blockwise of its code, then its ``+= offset``."""
    if NESTED:
        q = tl.load(absmax_ptr + block, mask=mask, other=0).to(tl.int32)
        scale = tl.load(code2_ptr + q) * tl.load(absmax2_ptr + block // BLOCKSIZE2, mask=mask, other=0.0)
        return scale + tl.load(offset_ptr)
    return tl.load(absmax_ptr + block, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _dequantize_4bit_kernel(packed_ptr, absmax_ptr, code_ptr, absmax2_ptr, code2_ptr, offset_ptr, out_ptr, ROWS, COLS,
                            SO, UNIT: tl.constexpr, BLOCKSIZE: tl.constexpr, BLOCKSIZE2: tl.constexpr,
                            NESTED: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Per element, for any row length (an odd one starts rows mid-byte). Row ``r`` of ``out`` is at ``r * SO *
    UNIT`` (``UNIT``: a power of two dividing the row stride, known to the compiler: vectorized stores)."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
    inside = (rows < ROWS) & (cols < COLS)
    index = rows * COLS + cols  # the element's place in the flattened weight
    byte = tl.load(packed_ptr + (index >> 1), mask=inside, other=0).to(tl.int32)
    nibble = (byte >> ((1 - (index & 1)) * 4)) & 15  # an even element is the byte's high nibble
    scale = _scale(absmax_ptr, absmax2_ptr, code2_ptr, offset_ptr, index // BLOCKSIZE, inside, BLOCKSIZE2, NESTED)
    value = tl.load(code_ptr + nibble) * scale
    tl.store(out_ptr + rows * (SO * UNIT) + cols, _to_element(value, out_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _dequantize_4bit_bytes_kernel(packed_ptr, absmax_ptr, code_ptr, absmax2_ptr, code2_ptr, offset_ptr, out_ptr,
                                  ROWS, COLS, SO, UNIT: tl.constexpr, BLOCKSIZE: tl.constexpr,
                                  BLOCKSIZE2: tl.constexpr, NESTED: tl.constexpr, BLOCK_R: tl.constexpr,
                                  CHUNKS: tl.constexpr, CHUNK: tl.constexpr, ALIGNED: tl.constexpr):
    """Per packed byte, for an even row length (rows start on a byte; ``out`` as in :func:`_dequantize_4bit_kernel`),
    over ``BLOCK_R`` rows x ``CHUNKS`` chunks of ``CHUNK`` elements. The absmax is read once per chunk, twice where
    a block may end inside one (not ``ALIGNED``: ``COLS % CHUNK``; a blocksize >= ``CHUNK`` ends one at most).

    A thread loads ``G`` contiguous bytes and stores their ``2 G`` values (16 bytes) side by side, so that the
    loaded and the stored layouts agree (Triton's join of the high and low values moves no data between threads)."""
    G: tl.constexpr = 64 // out_ptr.dtype.element_ty.primitive_bitwidth
    GROUPS: tl.constexpr = CHUNK // 2 // G
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None, None, None]
    chunks = tl.program_id(1) * CHUNKS + tl.arange(0, CHUNKS)[None, :, None, None]
    pairs = (tl.arange(0, GROUPS)[:, None] * G + tl.arange(0, G)[None, :])[None, None]  # the byte in its chunk
    used = (rows < ROWS) & (chunks * CHUNK < COLS)  # (BLOCK_R, CHUNKS, 1, 1): the chunk has elements
    inside = used if ALIGNED else used & (chunks * CHUNK + 2 * pairs < COLS)  # the byte has
    byte = tl.load(packed_ptr + rows * (COLS // 2) + chunks * (CHUNK // 2) + pairs, mask=inside, other=0)
    first = rows * COLS + chunks * CHUNK  # the chunk's first element in the flattened weight
    block = first // BLOCKSIZE
    scale = _scale(absmax_ptr, absmax2_ptr, code2_ptr, offset_ptr, block, used, BLOCKSIZE2, NESTED)
    if not ALIGNED:  # from the next block's first element on; that block exists where it starts in the row
        after = (block + 1) * BLOCKSIZE
        later = _scale(absmax_ptr, absmax2_ptr, code2_ptr, offset_ptr, block + 1,
                       used & (after < (rows + 1) * COLS), BLOCKSIZE2, NESTED)
        scale = tl.where(first + 2 * pairs < after, scale, later)
    high = tl.load(code_ptr + (byte >> 4)) * scale  # an even element is the byte's high nibble
    low = tl.load(code_ptr + (byte & 15)) * scale
    value = _to_element(tl.reshape(tl.join(high, low), (BLOCK_R, CHUNKS, GROUPS, 2 * G)), out_ptr.dtype.element_ty)
    cols = chunks * CHUNK + (tl.arange(0, GROUPS)[:, None] * 2 * G + tl.arange(0, 2 * G)[None, :])[None, None]
    tl.store(out_ptr + rows * (SO * UNIT) + cols, value, mask=(rows < ROWS) & (cols < COLS))


# whether these kernels run in Triton's interpreter (decided when they were decorated, at import)
INTERPRETED = isinstance(_dequantize_4bit_kernel, InterpretedFunction)

def dequantize_4bit_into(weight_data: Tensor, quant_state, dtype: torch.dtype, out: Optional[Tensor] = None) -> Tensor:
    """``bitsandbytes.functional.dequantize_4bit(weight_data, quant_state)`` in ``dtype``, in one launch.

    Args:
        weight_data: The packed uint8 weight (``Params4bit.data``), contiguous.
        quant_state: Its bitsandbytes ``QuantState`` (nested or not, any power-of-two blocksize).
        dtype: float32, bfloat16 or float16: each value is its float32 product rounded once to ``dtype``, as
            bitsandbytes computes it for a state of that dtype.
        out: Where to write it (returned): ``quant_state.shape``, ``dtype``, unit column stride, any row stride
            (e.g. ``buffer[:, :K]`` of a wider ``buffer``). None: a new contiguous tensor.
    """
    rows, cols = quant_state.shape
    if out is None:
        out = torch.empty(rows, cols, device=weight_data.device, dtype=dtype)
    elif out.shape != quant_state.shape or out.dtype != dtype or out.stride(1) != 1:
        raise ValueError(f'out must be {tuple(quant_state.shape)} {dtype} with unit column stride, got '
                         f'{tuple(out.shape)} {out.dtype} with strides {out.stride()}.')
    code = code_table(quant_state.quant_type, weight_data.device)
    nested = quant_state.nested
    absmax2, code2, offset = ((quant_state.state2.absmax, quant_state.state2.code, quant_state.offset) if nested
                              else (code, code, code))  # pointers the kernel does not read without nesting
    unit = math.gcd(out.stride(0), 16 // out.element_size())  # where rows start on 16 bytes: 16-byte stores
    args = (weight_data, quant_state.absmax, code, absmax2, code2, offset, out, rows, cols, out.stride(0) // unit)
    blocksize = quant_state.blocksize
    common = dict(UNIT=unit, BLOCKSIZE=blocksize, BLOCKSIZE2=quant_state.state2.blocksize if nested else 1,
                  NESTED=nested, **LAUNCH_OPTIONS)
    if cols % 2 or blocksize < CHUNK:
        _dequantize_4bit_kernel[(triton.cdiv(rows, BLOCK_R), triton.cdiv(cols, BLOCK_C))](
            *args, BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C, **common)
        return out
    chunks = min(triton.next_power_of_2(triton.cdiv(cols, CHUNK)), 4)  # up to 256 columns, as many rows as fit
    block_r = CHUNKS_PER_PROGRAM // chunks
    _dequantize_4bit_bytes_kernel[(triton.cdiv(rows, block_r), triton.cdiv(cols, chunks * CHUNK))](
        *args, BLOCK_R=block_r, CHUNKS=chunks, CHUNK=CHUNK, ALIGNED=cols % CHUNK == 0, **common)
    return out
