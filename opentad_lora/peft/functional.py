"""The LoRA maths, kept apart from the module bookkeeping so fast paths can replace it.

Two implementations of ``y = x @ W.T + b + dropout(x) @ A.T @ B.T * s`` with identical results:

* ``lora_linear_reference``: plain autograd ops (what PEFT does). Every fast path is tested against it.
* ``FusedLoRALinear``: one ``autograd.Function`` per layer. Backward computes ``g = dy @ B`` once and reuses it for
  both ``dx`` and ``dA``; it saves only ``x`` (shared by the layers that read the same tensor) and the rank-``r``
  ``dropout(x) @ A.T``. With dropout it keeps the generator state, not the mask nor the dropped-out copy, and draws
  the mask again in backward: LoRA dropout costs no memory (:mod:`.lora_dropout`). The frozen base weight gets no
  gradient, so no activation is kept for it; a float base's compute-dtype copy is kept as autocast would, a
  quantized base is dequantized again in backward as bitsandbytes does. Eager only: inside ``torch.compile`` layers
  on frozen bases take :mod:`.compiled_lora` (torch >= 2.12), the others plain autograd ops (:func:`use_plain_path`).

The low-rank product is added inside the base GEMM by concatenating along the reduction dimension:
``x @ W.T + (x A.T) @ (s B).T == [x | x A.T] @ [W | s B].T`` and ``dy @ W + g @ A == [dy | g] @ [W ; A]``. One
cuBLAS GEMM with ``K + r`` instead of ``K`` then writes the output once, where a separate ``addmm_`` reads and
writes the whole output again. The concatenation costs one copy of ``x`` (or ``dy``), so it is used where the
output is at least twice as wide as that operand; otherwise the low-rank product is ``addmm_``-ed into the output.
An input that needs a cast anyway (float32 under autocast, e.g. a LayerNorm's output) is cast straight into the
concatenated operand, and so is a weight that needs one (float32 frozen weights under autocast) together with
``s B``: there the concatenations cost nothing. A layer whose input function a Triton kernel computes (a LayerNorm
before ``qkv``/``fc1``, the GELU before ``fc2``) goes further on the kernels' devices, whatever its width: that
kernel writes ``[fn(x) | xA]`` in the compute dtype (:func:`_fn_operand`), so ``fn(x)`` is written once, never cast
or read again for ``xA``, and the low-rank product is added inside the GEMM.
Both forms issue about as many host-side operations as each other, which matters as much as GPU time: eager LoRA
steps are often bound by the host issuing kernels (benchmarks/RESULTS.md).

For a quantized (QLoRA) base the same function takes a ``dequantize(dtype, out=None)`` callable instead of a
weight: the 4/8-bit weight is dequantized to the compute dtype in forward (straight into ``[W | sB]`` where that is
made) and again in backward (weight-only quantization: activations stay in float), so no dequantized weight outlives
its GEMM unless ``keep_dequantized`` asks for it.

A layer that reads a norm's or an activation's output (``qkv(norm1(x))``, ``fc2(gelu(h))``) can take that
function as ``input_fn`` (:mod:`.input_fn`): it then keeps the function's input, which the function keeps anyway,
instead of its own copy of the output. Backward needs that output only for ``dA``: on CUDA the Triton ``dA`` kernel
computes a LayerNorm (from forward's per-row statistics) or an exact GELU in registers as it reads the input
(:func:`.dropout_kernels.grad_a`); elsewhere the function is applied again in memory.
"""
import weakref
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .input_fn import (Prologue, apply_input_fn, aux_to_save, forward_prologue, input_fn_backward, kernel_prologue,
                       saved_aux)
from .lora_dropout import dropout_forward, dropout_grad_a, dropout_grad_x, kernel_applies, kernels


def lora_delta(x: Tensor, lora_a: Tensor, lora_b: Tensor, scaling: float, dropout_p: float = 0.0,
               training: bool = False) -> Tensor:
    """``dropout(x) @ A.T @ B.T * scaling`` for linear layers, computed in the dtype of ``A``."""
    x = x.to(lora_a.dtype)
    if dropout_p > 0.0 and training:
        x = F.dropout(x, dropout_p, training=True)
    return F.linear(F.linear(x, lora_a), lora_b) * scaling


def lora_linear_reference(x: Tensor, weight: Tensor, bias: Optional[Tensor], lora_a: Tensor, lora_b: Tensor,
                          scaling: float, dropout_p: float = 0.0, training: bool = False) -> Tensor:
    """The reference LoRA linear: three autograd ops, as PEFT computes it."""
    result = F.linear(x, weight, bias)
    return result + lora_delta(x, lora_a, lora_b, scaling, dropout_p, training).to(result.dtype)


def base_operands(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
    """A float base's ``weight`` and ``bias`` as it computes with them on ``x``: cast to ``x``'s dtype outside
    autocast where they are stored in another one (``LoRAConfig.base_dtype``), as they are otherwise (autocast
    casts both operands itself)."""
    if weight.dtype == x.dtype or torch.is_autocast_enabled(x.device.type):
        return weight, bias
    return weight.to(x.dtype), None if bias is None else bias.to(x.dtype)


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype a layer computes in on ``x``: autocast's where it is on, else ``x``'s."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


def _scaled(tensor: Tensor, scaling: float, dtype: torch.dtype, out: Optional[Tensor] = None) -> Tensor:
    """``(tensor * scaling).to(dtype)`` as ONE kernel (into ``out`` if given): the product is rounded to the
    common dtype and cast on store, the same values as the two ops (tested), one launch fewer on a host-bound step."""
    if out is None and tensor.dtype == dtype:
        return tensor * scaling
    if out is None:
        out = torch.empty(tensor.shape, dtype=dtype, device=tensor.device)
    return torch.mul(tensor, scaling, out=out)


def _as(tensor: Tensor, dtype: torch.dtype) -> Tensor:
    """``tensor.to(dtype)`` without the call when the dtype already matches: a Python comparison costs a tenth of
    a no-op ``.to`` on the host, and the fused function does this eight times per layer and step."""
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


class _CastCache:
    """The last compute-dtype copy of an input, so layers that read the same tensor (q/k/v, gate/up) save ONE copy.

    Holds weak references only: an entry lives as long as some layer keeps the copy for backward, and a tensor
    changed in place (its version moves) is cast again. ``spare`` as in :func:`_cast`. Not used while compiling.
    """

    def __init__(self) -> None:
        self._entry: Optional[Tuple[weakref.ref, int, torch.dtype, weakref.ref]] = None

    def __call__(self, x: Tensor, dtype: torch.dtype, spare: int = 0) -> Tuple[Tensor, Optional[Tensor]]:
        if x.dtype == dtype:
            return x, None
        if torch.compiler.is_compiling():  # the entry is module state: setting it inside a checkpointed block breaks
            return _cast(x, dtype, spare)  # dynamo's graph there; AOTAutograd's CSE merges the repeated casts
        entry = self._entry
        if entry is not None and entry[0]() is x and entry[1] == x._version and entry[2] == dtype:
            cast = entry[3]()
            if cast is not None:
                return cast, None
        cast, buffer = _cast(x, dtype, spare)
        self._entry = (weakref.ref(x), x._version, dtype, weakref.ref(cast))
        return cast, buffer


def _cast(x: Tensor, dtype: torch.dtype, spare: int = 0) -> Tuple[Tensor, Optional[Tensor]]:
    """``x`` in ``dtype``; with ``spare > 0`` and a cast to make, it is made straight into the first columns of an
    ``(N, K + spare)`` buffer, also returned, so that the K-concatenated GEMM needs no second copy of ``x``."""
    if x.dtype == dtype or not spare:
        return x.to(dtype), None
    width = x.shape[-1]
    buffer = torch.empty(x.numel() // width, width + spare, dtype=dtype, device=x.device)
    cast = buffer[:, :width]
    cast.copy_(x.reshape(-1, width))
    return cast.view(x.shape), buffer


_cast_once = _CastCache()


def _fn_kernel_args(input_fn: nn.Module, weight: Optional[Tensor], x: Tensor, rank: int, autocast: bool,
                    dtype: torch.dtype) -> Optional[Tuple[Prologue, float]]:
    """The input function as :func:`_fn_operand` applies it (see :func:`.input_fn.forward_prologue`), or None: on
    the Triton kernels' devices only, with a frozen base (a trainable one needs ``fn(x)`` for its gradient) and a
    compute ``dtype`` of at most float32 precision (the kernel computes ``fn`` in float32)."""
    if weight is not None and weight.requires_grad or not kernel_applies(x, rank):
        return None
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return None
    return forward_prologue(input_fn, x, autocast)


def _gelu_in_kernel(input_fn: Optional[nn.Module], x: Tensor, dtype: torch.dtype) -> bool:
    """Whether the dropout kernel that adds the low-rank input gradient also applies the input function's backward:
    an exact GELU of a contiguous input in the compute dtype (``fc2`` after ``gelu(fc1(x))``)."""
    return type(input_fn) is nn.GELU and input_fn.approximate == 'none' and x.dtype == dtype and x.is_contiguous()


def _fn_operand(x: Tensor, fn_args: Tuple[Prologue, float], lora_a: Tensor, dropout_p: float,
                dtype: torch.dtype) -> Tuple[Tensor, Tensor, Optional[str], Optional[Tensor], Tuple[Tensor, ...]]:
    """``[fn(x) | xa]`` written by one kernel (:func:`.dropout_kernels.fn_xa`), where torch would write ``fn(x)``
    (a float32 norm under autocast), cast it into the operand and read it again for ``xa``, and a layer narrower
    than its input would add the low-rank product to its output in one more pass: on AdaTAD's long-video blocks those
    passes over the widest activations cost more than ``fn`` itself. Returns the operand, ``xa``, the dropout way and
    seed (``'kernel'``, or None without dropout) and a norm's statistics for backward (shaped as torch's)."""
    seed = kernels().new_seed(x.device) if dropout_p else None
    operand, xa, mean, rstd = kernels().fn_xa(kernels().rows(x), *fn_args, lora_a, seed, dropout_p, dtype)
    stats = () if mean is None else tuple(t.view(*x.shape[:-1], 1) for t in (mean, rstd))
    return operand, xa, None if seed is None else 'kernel', seed, stats


class FusedLoRALinear(torch.autograd.Function):
    """``x @ W.T + b + dropout(x) @ A.T @ B.T * s`` with a hand-written, memory-lean backward.

    ``weight`` is the base weight, or None together with ``dequantize(dtype, out=None) -> Tensor`` for a quantized
    base, whose dequantized weight is made again in backward (as bitsandbytes does) unless ``keep_dequantized``.

    Saved for backward: the compute-dtype input (the caller's own tensor when no cast is needed, one shared cast copy
    otherwise), the rank-``r`` ``dropout(x) @ A.T``, and with dropout a seed or generator state instead of the mask
    and the dropped-out copy (:mod:`.lora_dropout`): dropout costs no activation memory. With ``input_fn`` (see
    :func:`.input_fn.is_recomputable`) the layer computes on ``input_fn(x)`` but saves ``x``. Eager only
    (:func:`use_plain_path`).
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], lora_a: Tensor, lora_b: Tensor,
                scaling: float, dropout_p: float, training: bool,
                dequantize: Optional[Callable[..., Tensor]] = None,
                keep_dequantized: bool = False, input_fn: Optional[nn.Module] = None) -> Tensor:
        # Every operand is cast to the compute dtype explicitly, so autocast (if on) has nothing left to do here;
        # the body is kept short because eager LoRA steps are often bound by the host issuing kernels.
        autocast = torch.is_autocast_enabled(x.device.type)
        dtype = compute_dtype(x)
        in_features, (out_features, rank) = x.shape[-1], lora_b.shape
        wide = out_features >= 2 * in_features  # the output is the widest tensor: [x | xa] @ [W | sB].T
        fn_args = _fn_kernel_args(input_fn, weight, x, rank, autocast, dtype) if input_fn is not None else None
        concat = wide or fn_args is not None  # [x | xa] @ [W | sB].T, also where a kernel writes [fn(x) | xa]
        weight_cat = None  # [W | sB], when the cast or dequantized weight can be written straight into it
        if concat and (dequantize is not None or weight.dtype != dtype):
            weight_cat = torch.empty(out_features, in_features + rank, dtype=dtype, device=lora_b.device)
            head = weight_cat[:, :in_features]
            base_weight = dequantize(dtype, head) if dequantize is not None else head.copy_(weight)
        else:
            base_weight = dequantize(dtype) if dequantize is not None else _as(weight, dtype)
        # B is scaled once, here, for both passes (in place in [W | sB] if that exists: no torch.cat of W)
        b_c = _scaled(lora_b, scaling, dtype, None if weight_cat is None else weight_cat[:, in_features:])
        bias_c = _as(bias, dtype) if bias is not None else None
        a_c = _as(lora_a, dtype)
        # The input in the compute dtype, in x's own layout: dropout draws its mask in that layout (the reference's
        # and PEFT's stream), and a contiguous x of that dtype is saved as is, shared with every layer reading it.
        dropout = dropout_p > 0.0 and training
        # A cast input of a wide layer is cast straight into the [x | xa] operand (torch's dropout needs it alone)
        spare = rank if wide and (not dropout or kernel_applies(x, rank)) else 0
        fn_saved, dropout_way, dropout_saved = (), None, None
        if fn_args is not None:  # [fn(x) | xa] from one kernel
            operand, xa, dropout_way, dropout_saved, fn_saved = _fn_operand(x, fn_args, a_c, dropout_p if dropout
                                                                            else 0.0, dtype)
            source = operand[:, :in_features]
        else:
            if input_fn is None:
                source, operand = _cast_once(x, dtype, spare)
            else:
                source, fn_aux = apply_input_fn(input_fn, x, autocast)
                (source, operand), fn_saved = _cast(source, dtype, spare), aux_to_save(input_fn, fn_aux)
            if dropout:
                xa, dropout_way, dropout_saved = dropout_forward(source, a_c, dropout_p)
            else:
                xa = source.reshape(-1, in_features) @ a_c.t()  # (N, r): the only extra activation LoRA keeps
        x2d = source.reshape(-1, in_features)
        if concat:
            if operand is None:
                operand = torch.cat([x2d, xa], dim=1)
            elif fn_args is None:
                operand[:, in_features:].copy_(xa)
            if weight_cat is None:
                weight_cat = torch.cat([base_weight, b_c], dim=1)
            out = F.linear(operand, weight_cat, bias_c)
        else:
            out = F.linear(x2d, base_weight, bias_c).addmm_(xa, b_c.t())
        kept_weight = base_weight if dequantize is None or keep_dequantized else None
        ctx.save_for_backward(source if input_fn is None else x, xa, dropout_saved, kept_weight, a_c, b_c, *fn_saved)
        ctx.dequantize, ctx.input_fn, ctx.dropout_way = dequantize, input_fn, dropout_way
        ctx.meta = (scaling, dtype, dropout_p if training else 0.0, x.shape, x.dtype, autocast,  # one attribute
                    weight.dtype if weight is not None else None, bias.dtype if bias is not None else None,
                    lora_a.dtype, lora_b.dtype)
        return out.reshape(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> Tuple[Optional[Tensor], ...]:
        saved_input, xa, dropout_saved, base_weight, a_c, b_c, *fn_saved = ctx.saved_tensors
        scaling, dtype, dropout_p, x_shape, x_dtype, autocast, weight_dtype, bias_dtype, a_dtype, b_dtype = ctx.meta
        need_x, need_w, need_bias, need_a, need_b = ctx.needs_input_grad[:5]
        input_fn, source, way, rank = ctx.input_fn, saved_input, ctx.dropout_way, xa.shape[-1]
        fn_aux = saved_aux(fn_saved, saved_input, autocast) if input_fn is not None else None
        prologue = None  # input_fn computed inside the dA kernel, from x: nothing applied again in memory
        if input_fn is not None and way in (None, 'kernel') and not need_w and kernel_applies(saved_input, rank):
            prologue = kernel_prologue(input_fn, fn_aux)
        if input_fn is not None and prologue is None:  # forward's input_fn(x), again
            source, fn_aux = apply_input_fn(input_fn, saved_input, autocast)
            source = source.to(dtype)
        if base_weight is None and need_x:
            base_weight = ctx.dequantize(dtype)
        x2d = source.reshape(-1, source.shape[-1])
        out_features = grad_out.shape[-1]
        dy = _as(grad_out.reshape(-1, out_features), dtype)
        g = dy @ b_c  # (N, r) = dy @ (s B), shared by dx and dA
        grad_x = grad_w = grad_b = grad_a = grad_bb = None
        mask = None
        if prologue is not None:
            seed = dropout_saved if way == 'kernel' else None
            grad_a = kernels().grad_a(g, x2d.contiguous(), seed, dropout_p, prologue) if need_a else None
        elif way is not None:
            grad_a, mask = dropout_grad_a(way, dropout_saved, source, g, dropout_p, need_a)
        elif need_a:
            grad_a = g.t() @ x2d
        if need_w:  # a trainable base never meets dropout here (see can_fuse)
            grad_w = (dy.t() @ x2d).to(weight_dtype)
        del source, x2d  # frees input_fn's recomputed output before dx is made
        gelu_in_kernel = need_x and way == 'kernel' and _gelu_in_kernel(input_fn, saved_input, dtype)
        if gelu_in_kernel:  # dx += mask * (g @ A) / (1 - p), then GELU's backward: one pass
            grad_x = kernels().add_dropout_grad_x(dy @ base_weight, g, a_c, dropout_saved, dropout_p,
                                                  saved_input.reshape(-1, saved_input.shape[-1]))
        elif need_x and way is not None:
            grad_x = dropout_grad_x(way, dropout_saved, mask, g, a_c, dy, base_weight, dropout_p)
        elif need_x and base_weight.shape[1] >= 2 * out_features:  # [dy | g] @ [W ; A]
            grad_x = torch.cat([dy, g], dim=1) @ torch.cat([base_weight, a_c], dim=0)
        elif need_x:
            grad_x = (g @ a_c).addmm_(dy, base_weight)
        del mask
        if grad_a is not None:
            grad_a = _as(grad_a, a_dtype)
        if grad_x is not None:
            grad_x = grad_x.reshape(x_shape)
            if input_fn is not None and not gelu_in_kernel:
                grad_x = input_fn_backward(input_fn, grad_x, saved_input, fn_aux)
            grad_x = _as(grad_x, x_dtype)
        if need_bias:
            grad_b = dy.sum(0).to(bias_dtype)
        if need_b:
            grad_bb = _scaled(dy.t() @ xa, scaling, b_dtype)
        return grad_x, grad_w, grad_b, grad_a, grad_bb, None, None, None, None, None, None


# Below this many rows (tokens) a LoRA layer is bound by the host issuing kernels, not by the GPU: there the plain
# autograd ops of :func:`lora_linear_plain` (backward in C++) cost less than the Python backward of the fused function
# and save the same tensors. Measured on an H200 (benchmarks/RESULTS.md): a Qwen2-1.5B step on 2 x 1024 tokens is
# host-bound, ViT-H at batch 64 (12288 rows) and larger are GPU-bound.
PLAIN_MAX_ROWS = 8192


def use_plain_path(x: Tensor, dropout_p: float, training: bool) -> bool:
    """Whether the fused function is skipped: always inside ``torch.compile`` (where frozen-base layers without
    dropout take :mod:`.compiled_lora` on torch >= 2.12 and the others :func:`lora_linear_plain`), else few rows and no
    dropout (whose mask it would keep) take :func:`lora_linear_plain`.

    Compiled, plain autograd ops are what inductor can fuse and recompute. Through the fused autograd function it
    kept the function's saved tensors inside activation-checkpointed blocks instead of recomputing them: on an H200
    a whole-compiled checkpointed ViT-S kept 1629 MB for backward against 240 MB with plain ops, which also stepped
    in 25 ms instead of 34 ms (benchmarks/RESULTS.md, session 11; torch 2.11, fixed in 2.12). The CPU does not show
    it, so tests check which autograd functions are left in the compiled graph."""
    if torch.compiler.is_compiling():
        return True
    return x.numel() < PLAIN_MAX_ROWS * x.shape[-1] and not (dropout_p > 0.0 and training)


def lora_linear_plain(x: Tensor, base_forward: Callable[[Tensor], Tensor], lora_a: Tensor, lora_b: Tensor,
                      scaling: float, dropout_p: float = 0.0, training: bool = False) -> Tensor:
    """``base_forward(x) + dropout(x) @ A.T @ B.T * scaling`` in the compute dtype with plain autograd ops.

    ``base_forward`` gets ``x`` already in the compute dtype (the same copy the LoRA branch reads), so the base
    product is computed as in the fused function. Without dropout autograd saves that copy (shared by layers reading
    the same tensor) and the rank-``r`` ``x @ A.T``, as the fused function does; with it (compiled steps only, see
    :func:`use_plain_path`) what inductor chooses.
    """
    dtype = compute_dtype(x)
    source = _cast_once(x, dtype)[0]
    base_out = base_forward(source)
    x2d = source.reshape(-1, x.shape[-1])
    if dropout_p > 0.0 and training:  # the fused path's torch mask: the same op (F.dropout draws another way on
        x2d = torch.ops.aten.native_dropout(source, dropout_p, True)[0].reshape(x2d.shape)  # CPU), the same tensor
    xa = x2d @ lora_a.to(dtype).t()
    out = add_low_rank(base_out.reshape(-1, base_out.shape[-1]).to(dtype), xa, lora_b.to(dtype), scaling)
    return out.reshape(*base_out.shape[:-1], out.shape[-1])


def add_low_rank(base_out: Tensor, xa: Tensor, lora_b: Tensor, scaling: float) -> Tensor:
    """``base_out + xa @ B.T * scaling``. Eager: one ``addmm``. Compiled: a rank-``r`` GEMM and an add, because
    inductor runs an out-of-place ``addmm`` as a copy of ``base_out`` plus a GEMM that reads it again (H200, ViT-H b64:
    128 device copies, 4.2 ms a step), while the add fuses into the next pointwise kernel (residual, GELU)."""
    if torch.compiler.is_compiling():
        return base_out + (xa @ lora_b.t()) * scaling
    return torch.addmm(base_out, xa, lora_b.t(), alpha=scaling)


def can_fuse(weight: Tensor, dropout_p: float, training: bool) -> bool:
    """Whether the fused path applies to a float base: not when a trainable base meets LoRA dropout."""
    return weight.is_floating_point() and not (weight.requires_grad and dropout_p > 0.0 and training)


def lora_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], lora_a: Tensor, lora_b: Tensor, scaling: float,
                dropout_p: float = 0.0, training: bool = False, fused: bool = True,
                input_fn: Optional[nn.Module] = None) -> Tensor:
    """LoRA linear forward of ``input_fn(x)`` (or ``x``) for a float base; fused where it applies, else the reference.

    The fused path keeps ``x`` instead of ``input_fn(x)`` for backward (see :mod:`.input_fn`).
    """
    if fused and can_fuse(weight, dropout_p, training):
        return FusedLoRALinear.apply(x, weight, bias, lora_a, lora_b, scaling, dropout_p, training, None, False,
                                     input_fn)
    x = x if input_fn is None else input_fn(x)
    return lora_linear_reference(x, *base_operands(x, weight, bias), lora_a, lora_b, scaling, dropout_p, training)


def qlora_linear(x: Tensor, dequantize: Callable[..., Tensor], bias: Optional[Tensor], lora_a: Tensor,
                 lora_b: Tensor, scaling: float, dropout_p: float = 0.0, training: bool = False,
                 fused: bool = True, keep_dequantized: bool = False, input_fn: Optional[nn.Module] = None) -> Tensor:
    """LoRA linear forward for a quantized base given by ``dequantize(dtype, out=None)`` (the weight in ``dtype``,
    written into ``out`` when given); fused unless ``fused=False``.

    ``keep_dequantized`` keeps the dequantized weight from forward to backward instead of dequantizing again: one
    dequantization less per step, at the cost of a compute-dtype copy of every layer's weight held until backward.
    ``input_fn`` as in :func:`lora_linear`.
    """
    if fused:
        return FusedLoRALinear.apply(x, None, bias, lora_a, lora_b, scaling, dropout_p, training, dequantize,
                                     keep_dequantized, input_fn)
    x = x if input_fn is None else input_fn(x)
    weight = dequantize(compute_dtype(x))
    return lora_linear_reference(x, weight, bias, lora_a, lora_b, scaling, dropout_p, training)


def conv_delta_weight(lora_a: Tensor, lora_b: Tensor, scaling: float) -> Tensor:
    """The dense kernel equal to a conv ``A`` (kernel k) followed by a 1x..x1 conv ``B``, times ``scaling``."""
    b = lora_b.flatten(1)  # (out, r)
    return torch.einsum('or,r...->o...', b, lora_a) * scaling


def linear_delta_weight(lora_a: Tensor, lora_b: Tensor, scaling: float,
                        dtype: Optional[torch.dtype] = None) -> Tensor:
    """``B @ A * scaling`` in float32 (exact enough to merge into any dtype), cast to ``dtype`` if given."""
    delta = (lora_b.float() @ lora_a.float()) * scaling
    return delta if dtype is None else delta.to(dtype)
