"""NF4 dequantization in one Triton launch, bit for bit bitsandbytes' ``dequantize_4bit``.

Why not bitsandbytes' own op: a QLoRA layer dequantizes its weight in forward and again in backward, and eager steps
on small layers are bound by the host issuing kernels (benchmarks/RESULTS.md: ViT-B QLoRA-4 1.81x the floor where
LoRA costs 1.47x). With double quantization bitsandbytes issues three ops per dequantization (the 8-bit absmax, the
offset, the 4-bit weight), each through a Python wrapper and ctypes; this kernel does all three in one launch.

The numbers are those of bitsandbytes' CUDA and CPU kernels: the block's absmax is ``code2[q] * absmax2`` rounded to
float32, plus ``offset`` rounded again (two roundings, so floating-point contraction is turned off), and every value
is ``nf4[nibble] * absmax`` in float32 rounded once to the output dtype; the high nibble of a byte comes first.
Tests run it on CPU through Triton's interpreter against bitsandbytes; ``benchmarks/cuda_parity.py`` on the GPU.
"""
import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK = 2048  # output values per program


@triton.jit
def _nf4_kernel(packed_ptr, absmax_ptr, code2_ptr, absmax2_ptr, offset_ptr, nf4_ptr, out_ptr, numel,
                BLOCKSIZE: tl.constexpr, BLOCKSIZE2: tl.constexpr, NESTED: tl.constexpr, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = offsets < numel
    byte = tl.load(packed_ptr + offsets // 2, mask=valid, other=0).to(tl.int32)
    nibble = tl.where(offsets % 2 == 0, byte >> 4, byte & 15)
    block = offsets // BLOCKSIZE
    if NESTED:
        quantized = tl.load(absmax_ptr + block, mask=valid, other=0).to(tl.int32)
        absmax = tl.load(code2_ptr + quantized) * tl.load(absmax2_ptr + block // BLOCKSIZE2, mask=valid, other=0)
        absmax = absmax + tl.load(offset_ptr)
    else:
        absmax = tl.load(absmax_ptr + block, mask=valid, other=0)
    value = tl.load(nf4_ptr + nibble) * absmax
    if out_ptr.dtype.element_ty == tl.bfloat16:  # round to nearest even on the bits: the interpreter truncates
        bits = value.to(tl.int32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        tl.store(out_ptr + offsets, bits.to(tl.int16).to(tl.bfloat16, bitcast=True), mask=valid)
    else:
        tl.store(out_ptr + offsets, value.to(out_ptr.dtype.element_ty), mask=valid)


def dequantize_nf4(packed: Tensor, state, dtype: torch.dtype) -> Tensor:
    """The ``state.shape`` weight in ``dtype`` from bitsandbytes' packed NF4 data and ``QuantState``."""
    numel = state.shape.numel()
    out = torch.empty(state.shape, dtype=dtype, device=packed.device)
    nested = bool(state.nested)
    if nested:
        absmax, code2, absmax2, offset = state.absmax, state.state2.code, state.state2.absmax, state.offset
        blocksize2 = state.state2.blocksize
    else:  # unused pointers: any float32 tensor
        absmax = code2 = absmax2 = offset = state.absmax
        blocksize2 = 1
    _nf4_kernel[(triton.cdiv(numel, BLOCK),)](packed, absmax, code2, absmax2, offset, state.code, out, numel,
                                              BLOCKSIZE=state.blocksize, BLOCKSIZE2=blocksize2, NESTED=nested,
                                              BLOCK=BLOCK, enable_fp_fusion=False)
    return out
