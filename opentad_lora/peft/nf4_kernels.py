"""bitsandbytes 4-bit (NF4/FP4) dequantization in one Triton launch, optionally into a strided output view.

bitsandbytes dequantizes a double-quantized weight in three launches, each with Python dispatch on the host: the
nested absmax (``code2[q] * absmax2``), ``absmax += offset`` and the 4-bit op; the fused LoRA function then copies
the result into its ``[W | sB]`` operand. Eager QLoRA steps are bound by the host issuing kernels, so this kernel does
all of it per element in registers and writes straight into the caller's buffer (e.g. the first ``K`` columns of
an ``(O, K + r)`` operand, any row stride).

Bit for bit bitsandbytes' ``dequantize_4bit``: each element is ``code[nibble] * absmax[block]`` in float32 rounded
once to the output dtype; a nested absmax is ``code2[q] * absmax2[block2]`` rounded to float32, then ``+ offset``
rounded again (launched with ``enable_fp_fusion=False``, so that Triton does not contract it into one FMA). Packing:
element ``i`` of the flattened weight is in byte ``i // 2``, its high nibble when ``i`` is even; block ``i //
blocksize``. Tests run it on CPU through Triton's interpreter (``TRITON_INTERPRET=1``).
"""
from typing import Dict, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .dropout_kernels import _to_element  # float32 to a 16-bit dtype, round to nearest even (also interpreted)

# Triton chooses between compiling and interpreting when a kernel is decorated, i.e. when this module is first
# imported: :mod:`.quant` imports it only where it applies.

BLOCK_R, BLOCK_C = 16, 128  # 2048 elements per program, in rows of 128 contiguous output elements
# no FMA contraction of the nested absmax's product and offset (Triton's default may contract them)
LAUNCH_OPTIONS = dict(num_warps=4, enable_fp_fusion=False)
_CODES: Dict[Tuple[str, torch.device], Tensor] = {}  # bitsandbytes' float32 4-bit code tables, per device


@triton.jit
def _dequantize_4bit_kernel(packed_ptr, absmax_ptr, code_ptr, absmax2_ptr, code2_ptr, offset_ptr, out_ptr, ROWS, COLS,
                            SO, BLOCKSIZE: tl.constexpr, BLOCKSIZE2: tl.constexpr, NESTED: tl.constexpr,
                            BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    inside = (rows[:, None] < ROWS) & (cols[None, :] < COLS)
    index = rows[:, None] * COLS + cols[None, :]  # the element's place in the flattened weight
    byte = tl.load(packed_ptr + (index >> 1), mask=inside, other=0).to(tl.int32)
    nibble = (byte >> ((1 - (index & 1)) * 4)) & 15  # an even element is the byte's high nibble
    block = index // BLOCKSIZE
    if NESTED:  # bitsandbytes' dequantize_blockwise of the absmax codes, then its separate ``+= offset``
        q = tl.load(absmax_ptr + block, mask=inside, other=0).to(tl.int32)
        scale = tl.load(code2_ptr + q) * tl.load(absmax2_ptr + block // BLOCKSIZE2, mask=inside, other=0.0)
        scale = scale + tl.load(offset_ptr)
    else:
        scale = tl.load(absmax_ptr + block, mask=inside, other=0.0).to(tl.float32)
    value = tl.load(code_ptr + nibble) * scale
    tl.store(out_ptr + rows[:, None] * SO + cols[None, :], _to_element(value, out_ptr.dtype.element_ty), mask=inside)


def _code(quant_type: str, device: torch.device) -> Tensor:
    """bitsandbytes' 16-entry float32 table of ``quant_type`` on ``device`` (made once per device).

    FP4's code 8 (sign bit alone) is -0.0, as bitsandbytes' CUDA and CPU kernels compute it (``0 * -1``); its table
    (``get_4bit_type``), which only its generic torch fallback reads, lists +0.0."""
    code = _CODES.get((quant_type, device))
    if code is None:
        from bitsandbytes.functional import get_4bit_type
        code = get_4bit_type(quant_type, device=device).float()
        if quant_type == 'fp4':
            code[8] = -0.0
        _CODES[(quant_type, device)] = code
    return code


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
    code = _code(quant_state.quant_type, weight_data.device)
    nested = quant_state.nested
    absmax2, code2, offset = ((quant_state.state2.absmax, quant_state.state2.code, quant_state.offset) if nested
                              else (code, code, code))  # pointers the kernel does not read without nesting
    _dequantize_4bit_kernel[(triton.cdiv(rows, BLOCK_R), triton.cdiv(cols, BLOCK_C))](
        weight_data, quant_state.absmax, code, absmax2, code2, offset, out, rows, cols, out.stride(0),
        BLOCKSIZE=quant_state.blocksize, BLOCKSIZE2=quant_state.state2.blocksize if nested else 1, NESTED=nested,
        BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C, **LAUNCH_OPTIONS)
    return out
