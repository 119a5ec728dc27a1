"""QLoRA bases: swap a frozen ``nn.Linear`` for a bitsandbytes 4-bit or 8-bit layer, and back.

bitsandbytes quantizes a ``Params4bit``/``Int8Params`` when it is moved to a device; both layers run on CPU with
bitsandbytes >= 0.45, so QLoRA is tested without a GPU. The import is lazy: a float-only user never loads bnb.

4-bit weights are dequantized on CUDA by :mod:`.nf4_kernels` (one Triton launch, bitsandbytes' bits, written
straight into the fused function's ``[W | sB]``), inside ``torch.compile`` by torch ops inductor fuses, elsewhere by
bitsandbytes' ops.
On an H200 the kernel took no more GPU time than bitsandbytes' three launches in a whole QLoRA-4 step and issued
228 (ViT-B) and 608 (ViT-H) fewer kernels per step, which the host-bound eager step feels
(benchmarks/RESULTS.md, session 9). ``OPENTAD_LORA_DEQUANT_KERNEL=bnb`` keeps bitsandbytes' ops everywhere;
``=interpret`` also sends CPU tensors to the kernel through Triton's interpreter (tests; needs
``TRITON_INTERPRET=1`` before the kernel modules are imported).
"""
import functools
import os
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, nn


def require_bitsandbytes():
    """Import bitsandbytes or raise an ImportError that says how to install it."""
    try:
        import bitsandbytes as bnb
    except ImportError as err:  # pragma: no cover - bitsandbytes is a runtime requirement
        raise ImportError('QLoRA (quantize_bits=4|8) needs bitsandbytes>=0.45: pip install bitsandbytes') from err
    return bnb


def is_quantized(layer: nn.Module) -> bool:
    """Whether ``layer`` is a bitsandbytes 4-bit or 8-bit linear layer (without importing bitsandbytes)."""
    return type(layer).__module__.startswith('bitsandbytes') and hasattr(layer, 'weight')


def quantized_bits(layer: nn.Module) -> Optional[int]:
    """4 or 8 for a bitsandbytes layer, None for anything else."""
    if not is_quantized(layer):
        return None
    return 4 if type(layer).__name__.startswith('Linear4bit') else 8


def quantize_linear(linear: nn.Linear, bits: int, quant_type: str = 'nf4', double_quant: bool = True,
                    compute_dtype: Optional[torch.dtype] = None,
                    quant_storage: Optional[torch.dtype] = None) -> nn.Module:
    """Return a frozen bitsandbytes copy of ``linear`` holding its weights quantized.

    Args:
        linear: The float layer; it is not modified.
        bits: 4 (``Linear4bit``) or 8 (``Linear8bitLt``, inference-style int8 weights).
        quant_type: ``'nf4'`` or ``'fp4'`` (4-bit only).
        double_quant: Quantize the absmax statistics too (4-bit only).
        compute_dtype: dtype of the 4-bit matmul; None uses the input's dtype.
        quant_storage: dtype holding the packed 4-bit data (None: uint8); a float dtype lets FSDP flatten it.
    """
    bnb = require_bitsandbytes()
    device = linear.weight.device
    # Quantize from the compute dtype when one is given, so dequantization yields that dtype directly.
    weight = linear.weight.data.detach().to('cpu', compute_dtype or torch.float32).contiguous()
    has_bias = linear.bias is not None
    if bits == 4:
        storage = quant_storage or torch.uint8
        layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=has_bias,
                                  compute_dtype=compute_dtype, compress_statistics=double_quant,
                                  quant_type=quant_type, quant_storage=storage, device='cpu')
        layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type=quant_type,
                                         compress_statistics=double_quant, quant_storage=storage, module=layer)
        # On AVX512-BF16 CPUs bitsandbytes repacks the weight in place at the first no-grad eval forward, after
        # which training forwards fail and dequantize_4bit reads the wrong layout: keep the standard layout.
        layer.support_avx512bf16_for_cpu = False
    elif bits == 8:
        layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=has_bias,
                                    has_fp16_weights=False, device='cpu')
        layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    else:
        raise ValueError(f'quantize_bits must be 4 or 8, got {bits!r}.')
    if has_bias:
        # the bias keeps its dtype (as bitsandbytes-loaded models have it): a float32 copy of a bf16 bias would
        # cost twice its memory and a cast each step
        layer.bias = nn.Parameter(linear.bias.data.detach().to('cpu', copy=True), requires_grad=False)
    return layer.to(device)  # bitsandbytes quantizes on this move, on the target device


def dequantize_weight(layer: nn.Module, dtype: torch.dtype = torch.float32, out: Optional[Tensor] = None) -> Tensor:
    """The weight of a bitsandbytes layer in ``dtype``, bit for bit ``dequantize_4bit(...).to(dtype)`` (4-bit).

    It runs in every QLoRA forward and backward, where eager steps are host-bound: each path issues as few ops as
    its result allows (see :func:`_dequantize_4bit` and :func:`_dequantize_8bit`). With ``out`` (the weight's shape,
    ``dtype``, unit column stride, any row stride: e.g. the first columns of a wider operand) it is written there and
    ``out`` returned.
    """
    bits = quantized_bits(layer)
    if bits == 4:
        return _dequantize_4bit(layer, dtype, out)
    if bits == 8:
        return _dequantize_8bit(layer, dtype, out)
    raise TypeError(f'{type(layer).__name__} is not a bitsandbytes quantized layer.')


@functools.cache
def _dequant_kernels():
    """:mod:`.nf4_kernels`, or None without Triton."""
    try:
        from . import nf4_kernels
    except ImportError:  # no Triton
        return None
    return nf4_kernels


_KERNEL_CHOICES = ('bnb', 'kernel', 'interpret')
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _dequant_choice() -> str:
    """``OPENTAD_LORA_DEQUANT_KERNEL`` (default ``'kernel'``), checked against :data:`_KERNEL_CHOICES`."""
    choice = os.environ.get('OPENTAD_LORA_DEQUANT_KERNEL', 'kernel')
    if choice not in _KERNEL_CHOICES:
        raise ValueError(f'OPENTAD_LORA_DEQUANT_KERNEL={choice!r}: use one of {_KERNEL_CHOICES} (or leave it unset).')
    return choice


def _dequant_kernel_applies(weight: Tensor, state, dtype: torch.dtype, out: Optional[Tensor]) -> bool:
    """Whether :mod:`.nf4_kernels` serves this weight: not turned off (``=kernel``, the default: CUDA;
    ``=interpret``: CUDA and CPU),
    Triton installed, contiguous uint8 storage of a 2-D weight, a float output dtype, int32 offsets (weight and
    ``out``), not inside ``torch.compile``. ``=interpret`` on CPU without Triton's interpreter is an error."""
    choice = _dequant_choice()
    device = weight.device.type
    if choice == 'bnb' or not (device == 'cuda' or (device == 'cpu' and choice == 'interpret')):
        return False
    if weight.dtype != torch.uint8 or dtype not in _KERNEL_DTYPES or len(state.shape) != 2:
        return False
    if not weight.is_contiguous():
        return False
    if max(weight.numel() * 2, 0 if out is None else out.shape[0] * out.stride(0)) >= 2 ** 31:
        return False
    kernels = None if torch.compiler.is_compiling() else _dequant_kernels()
    if kernels is not None and device == 'cpu' and not kernels.INTERPRETED:
        raise RuntimeError('OPENTAD_LORA_DEQUANT_KERNEL=interpret runs the 4-bit kernel on CPU tensors through '
                           "Triton's interpreter: set TRITON_INTERPRET=1 before opentad_lora's kernels are imported.")
    return kernels is not None


_CODES: Dict[Tuple[str, torch.device], Tensor] = {}  # bitsandbytes' float32 4-bit code tables, per device


def code_table(quant_type: str, device: torch.device) -> Tensor:
    """bitsandbytes' 16-entry float32 table of ``quant_type`` on ``device`` (made once per device).

    FP4's code 8 (sign bit alone) is -0.0, as bitsandbytes' CUDA and CPU kernels compute it (``0 * -1``); its table
    (``get_4bit_type``), which only its generic torch fallback reads, lists +0.0."""
    code = _CODES.get((quant_type, device))
    if code is None:
        from bitsandbytes.functional import get_4bit_type
        code = get_4bit_type(quant_type, device=device).float()
        if quant_type == 'fp4':
            code[8] = -0.0
        if not torch.compiler.is_compiling():  # a graph makes its own (dynamo does not let it escape a function)
            _CODES[(quant_type, device)] = code
    return code


def _dequantize_4bit_flat(packed: Tensor, absmax: Tensor, state, dtype: torch.dtype) -> Tensor:
    """bitsandbytes' 4-bit dequantization in torch ops, with blocks over the flattened weight as its CUDA and scalar
    CPU kernels take them: ``code[nibble] * absmax[block]`` in float32, rounded once to ``dtype``.

    Used inside ``torch.compile`` (one multiply per value: no fused multiply-add can round it otherwise) and on CPU
    where a row is not whole blocks: there bitsandbytes 0.50's AVX-512 op, which takes blocks row by row, returns
    wrong values (a relative error of ~1; tests/test_peft/test_quant_dequantize.py)."""
    count, blocksize = state.shape.numel(), state.blocksize
    data = packed.reshape(-1).view(torch.uint8)
    shifts = torch.tensor([4, 0], dtype=torch.uint8, device=data.device)  # a broadcast, which inductor recomputes
    nibbles = ((data.unsqueeze(1) >> shifts) & 15).reshape(-1)[:count]
    values = code_table(state.quant_type, packed.device)[nibbles.long()]
    blocks = -(-count // blocksize)
    values = torch.nn.functional.pad(values, (0, blocks * blocksize - count)).view(blocks, blocksize)
    return (values * absmax[:blocks, None]).reshape(-1)[:count].view(state.shape).to(dtype)


def _dequantize_4bit_in_torch_ops(weight: Tensor, state) -> bool:
    """Whether :func:`_dequantize_4bit_flat` serves a 4-bit weight: inside ``torch.compile`` (inductor fuses it into
    what reads the weight, e.g. the concatenated ``[W | B]`` of :mod:`.compiled_lora`, and can recompute it;
    ``OPENTAD_LORA_DEQUANT_KERNEL=bnb`` keeps bitsandbytes' op there too), and on CPU where a row is not whole
    blocks."""
    if torch.compiler.is_compiling():
        return _dequant_choice() != 'bnb'
    return weight.device.type == 'cpu' and state.shape[-1] % state.blocksize != 0


def _dequantize_4bit(layer: nn.Module, dtype: torch.dtype, out: Optional[Tensor] = None) -> Tensor:
    """``bnb.functional.dequantize_4bit(weight, quant_state).to(dtype)``: one Triton launch where
    :func:`_dequant_kernel_applies`, else one 4-bit bitsandbytes op producing ``dtype`` (copied into ``out``), or
    :func:`_dequantize_4bit_flat` where :func:`_dequantize_4bit_in_torch_ops`.

    bitsandbytes' CPU and CUDA kernels compute each value as a float32 product and round it once to the output
    dtype, so asking them for ``dtype`` equals the float32 result cast. A state of another dtype (a layer quantized
    with a 16-bit ``compute_dtype``) is rounded to that dtype first, as before, unless ``dtype`` is that dtype.
    The double-quant absmax is dequantized each call (its float32 copy would add 1/16 byte per weight).
    """
    weight = layer.weight  # FSDP (use_orig_params) replaces the Params4bit by a plain view; the layer keeps the state
    state = getattr(weight, 'quant_state', None)
    if state is None:
        state = layer.quant_state
    out_dtype = dtype if state.dtype in (torch.float32, dtype) else state.dtype
    if out_dtype == dtype and _dequant_kernel_applies(weight, state, dtype, out):  # the kernel reads its pointer
        return _dequant_kernels().dequantize_4bit_into(weight, state, dtype, out)
    absmax = state.absmax
    if state.nested:
        nested = state.state2
        absmax = torch.ops.bitsandbytes.dequantize_blockwise.default(absmax, nested.absmax, nested.code,
                                                                     nested.blocksize, torch.float32)
        absmax += state.offset
    if _dequantize_4bit_in_torch_ops(weight, state):
        result = _dequantize_4bit_flat(weight.data, absmax, state, out_dtype)
    else:
        result = torch.ops.bitsandbytes.dequantize_4bit.default(weight.data, absmax, state.blocksize,
                                                                state.quant_type, state.shape, out_dtype)
    if out is not None:
        return out.copy_(result)
    return result if out_dtype == dtype else _kept_rounding(result).to(dtype)


def _kept_rounding(tensor: Tensor) -> Tensor:
    """``tensor`` whose 16-bit rounding survives the ops fused after it: inductor computes fused 16-bit values in
    float32 and rounds only what it stores, so compiled ``.to(bfloat16).to(float32)`` returns the unrounded value.
    An integer op on the bits (``| 0``) needs the rounded ones. A no-op in eager and for other dtypes."""
    if not torch.compiler.is_compiling() or tensor.element_size() != 2:
        return tensor
    return (tensor.view(torch.int16) | 0).view(tensor.dtype)


def _dequantize_8bit(layer: nn.Module, dtype: torch.dtype, out: Optional[Tensor] = None) -> Tensor:
    """``int8 weight * scales / 127`` in ``dtype`` as one multiply by a cached ``(scales.to(dtype) / 127)`` column.

    The int8 weight is promoted to ``dtype`` inside the multiply (exact: |w| <= 127), which then rounds the same
    product as ``weight.to(dtype) * column``, written into ``out`` when given. The columns (one float per output row
    and dtype) are rebuilt when the scales tensor is replaced or modified in place.
    """
    scales = _int8_scales(layer)
    # compiled: inductor fuses the column into the multiply (and dynamo cannot trace is_inference); inference
    # tensors have no version counter to check a cached column against
    if torch.compiler.is_compiling() or scales.is_inference():
        column = _kept_rounding(_kept_rounding(scales.to(dtype)) / 127.0)  # eager's two roundings
        return torch.mul(layer.weight.data, column.unsqueeze(1), out=out)
    cache = layer.__dict__.get('_dequant_scale_columns')
    if cache is None or cache[0] is not scales or cache[1] != scales._version:
        cache = layer.__dict__['_dequant_scale_columns'] = (scales, scales._version, {})
    column = cache[2].get(dtype)
    if column is None:
        column = cache[2][dtype] = (scales.to(dtype) / 127.0).unsqueeze(1)
    return torch.mul(layer.weight.data, column, out=out)


class _DequantizingLinear(torch.autograd.Function):
    """``x @ W.T + b`` for a frozen quantized ``W``: dequantized to ``x``'s dtype in forward and again in backward.

    bitsandbytes' own ``matmul_4bit`` does the same on GPU, but on CPU it rewrites the layer's quantization state to
    the input's dtype; this keeps the numbers of :func:`dequantize_weight` (those of the fused LoRA function) on
    every device and never holds the dequantized weight between forward and backward.
    """

    @staticmethod
    def forward(ctx, x: Tensor, bias: Optional[Tensor], layer: nn.Module) -> Tensor:
        ctx.layer = layer
        return torch.nn.functional.linear(x, dequantize_weight(layer, x.dtype), bias)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        grad_x = grad_out @ dequantize_weight(ctx.layer, grad_out.dtype) if ctx.needs_input_grad[0] else None
        return grad_x, None, None


def dequantizing_linear(layer: nn.Module, x: Tensor) -> Tensor:
    """The output of a (frozen) bitsandbytes layer computed in ``x``'s dtype from its dequantized weight.

    Inside ``torch.compile`` plain ops: inductor kept what an autograd function saved inside activation-checkpointed
    blocks instead of recomputing it (an H200 QLoRA-4 ViT-S kept 1186 MB for backward against eager's 259 MB,
    benchmarks/RESULTS.md, session 11)."""
    bias = layer.bias.to(x.dtype) if layer.bias is not None else None
    if torch.compiler.is_compiling():
        return torch.nn.functional.linear(x, dequantize_weight(layer, x.dtype), bias)
    return _DequantizingLinear.apply(x, bias, layer)


def _int8_scales(layer: nn.Module) -> Tensor:
    """The per-row absmax scales of a ``Linear8bitLt``, on the weight's device.

    bitsandbytes keeps them on the parameter (``weight.SCB``) until the first forward moves them to ``state.SCB``;
    ``model.to(device)`` after quantization does not move them, so they are moved (once) here.
    """
    holder = layer.weight if getattr(layer.weight, 'SCB', None) is not None else layer.state
    if holder.SCB.device != layer.weight.device:
        holder.SCB = holder.SCB.to(layer.weight.device)
    return holder.SCB


def dequantize_linear(layer: nn.Module, bias_dtype: torch.dtype = torch.float32) -> nn.Linear:
    """A float32 ``nn.Linear`` with the dequantized weight (and the bias, in ``bias_dtype``) of a bitsandbytes
    layer."""
    weight = dequantize_weight(layer)
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=layer.bias is not None, device=weight.device)
    out.weight.data.copy_(weight)
    if layer.bias is not None:
        out.bias = nn.Parameter(layer.bias.data.to(bias_dtype, copy=True))
    return out.requires_grad_(False)


def requantize_like(layer: nn.Module, weight: Tensor) -> nn.Module:
    """A new bitsandbytes layer of the same kind and options as ``layer`` holding ``weight`` (and its bias, in its
    dtype)."""
    float_layer = dequantize_linear(layer, layer.bias.dtype if layer.bias is not None else torch.float32)
    float_layer.weight.data.copy_(weight)
    bits = quantized_bits(layer)
    if bits == 4:
        return quantize_linear(float_layer, 4, layer.weight.quant_type, layer.weight.compress_statistics,
                               layer.compute_dtype, layer.weight.dtype if layer.weight.dtype != torch.uint8 else None)
    return quantize_linear(float_layer, 8)
