"""On a GPU: the fused LoRA/QLoRA paths against the reference path, forward and every gradient.

Prints one JSON line per case with the relative error ||fused - ref|| / ||ref|| of the output and of the gradients
of x, A and B (the CPU tests check the same on CPU; this records what the GPU kernels give). Dropout cases draw
torch's mask (``OPENTAD_LORA_DROPOUT_KERNEL=torch``, the reference's stream); the ``kernel`` cases compare the
Triton dropout kernels with the reference maths on the kernels' own mask; the ``kernel_prologue`` cases compare the
gradients of a layer whose dA kernel applies its input function (LayerNorm, GELU) with those of the same layer
applying it again in memory (same dropout seed); the ``_fn_kernel_args`` cases a layer whose input function a kernel
writes into its operand with the same layer using torch's function and a cast. The ``compiled_concat`` cases
compare a layer compiled by inductor on ``LoRAConcatGEMM`` with the eager reference, the ``compiled_dequant`` ones
the dequantized weight of compiled code with eager's, bit for bit.
"""
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from opentad_lora.peft import apply_lora  # noqa: E402
from opentad_lora.peft import compiled_lora as CL  # noqa: E402
from opentad_lora.peft import functional as LF  # noqa: E402
from opentad_lora.peft.quant import dequantize_weight  # noqa: E402
from routing import routed  # noqa: E402  (this folder, on sys.path when run as a script)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


def run_case(bits, autocast: bool, dropout: float, features=(1024, 4096)) -> dict:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(*features)).cuda()
    apply_lora(model, dict(r=16, alpha=32, targets=['0'], dropout=dropout, quantize_bits=bits,
                           compute_dtype='bf16' if bits else None))
    layer = model[0]
    with torch.no_grad():
        layer.lora_B['default'].weight.normal_(0, 0.02)
    layer.train()
    x = torch.randn(8, 197, features[0], device='cuda', requires_grad=True)
    params = [x, layer.lora_A['default'].weight, layer.lora_B['default'].weight]
    outs, grads = [], []
    for fused in (True, False):
        layer.fused = fused
        torch.manual_seed(1)
        with torch.autocast('cuda', dtype=torch.bfloat16, enabled=autocast):
            out = layer(x)
        grads.append(torch.autograd.grad(out.float().square().mean(), params))
        outs.append(out)
    return dict(bits=bits, autocast=autocast, dropout=dropout, features=features, out=rel(outs[0], outs[1]),
                grad_x=rel(grads[0][0], grads[1][0]), grad_A=rel(grads[0][1], grads[1][1]),
                grad_B=rel(grads[0][2], grads[1][2]))


def run_kernel_case(autocast: bool, features=(1024, 4096), rows: int = 1576, p: float = 0.1) -> dict:
    """The fused function with the Triton dropout kernels vs plain torch maths on :func:`keep_mask`'s mask."""
    from opentad_lora.peft.dropout_kernels import keep_mask
    torch.manual_seed(0)
    fan_in, fan_out = features
    x = torch.randn(rows, fan_in, device='cuda', requires_grad=True)
    weight, bias = torch.randn(fan_out, fan_in, device='cuda') / fan_in ** 0.5, torch.randn(fan_out, device='cuda')
    lora_a = (torch.randn(16, fan_in, device='cuda') / fan_in ** 0.5).requires_grad_()
    lora_b = (torch.randn(fan_out, 16, device='cuda') * 0.02).requires_grad_()
    dtype = torch.bfloat16 if autocast else torch.float32
    torch.manual_seed(1)
    with torch.autocast('cuda', dtype=torch.bfloat16, enabled=autocast):
        out = LF.lora_linear(x, weight, bias, lora_a, lora_b, 2.0, p, True)
    torch.manual_seed(1)  # the seed the layer drew
    mask = keep_mask(torch.randint(0, 2 ** 31 - 1, (1,), device='cuda', dtype=torch.int64), (rows, fan_in), p,
                     x.device)
    with torch.autocast('cuda', dtype=torch.bfloat16, enabled=autocast):
        dropped = x.to(dtype) * mask / (1 - p)
        ref = torch.nn.functional.linear(x, weight, bias) + dropped @ lora_a.to(dtype).t() @ lora_b.to(dtype).t() * 2.0
    params = (x, lora_a, lora_b)
    got = torch.autograd.grad(out.float().square().mean(), params)
    want = torch.autograd.grad(ref.float().square().mean(), params)
    return dict(path='kernel', way=out.grad_fn.dropout_way, autocast=autocast, dropout=p, features=features,
                keep=round(mask.float().mean().item(), 4), out=rel(out, ref), grad_x=rel(got[0], want[0]),
                grad_A=rel(got[1], want[1]), grad_B=rel(got[2], want[2]))


def run_compiled_case(bits, autocast: bool, features=(1024, 4096), rows: int = 8 * 1100,
                      device: str = 'cuda') -> dict:
    """The layer compiled by inductor on ``LoRAConcatGEMM`` (forced where torch < 2.12), against the reference ops in
    eager mode; ``concat_calls`` counts the function's traced calls (0 would mean another path was timed)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(*features)).to(device)
    apply_lora(model, dict(r=16, alpha=32, targets=['0'], dropout=0.0, quantize_bits=bits,
                           compute_dtype='bf16' if bits else None))
    layer = model[0]
    with torch.no_grad():
        layer.lora_B['default'].weight.normal_(0, 0.02)
    x = torch.randn(8, rows // 8, features[0], device=device, requires_grad=True)
    params = [x, layer.lora_A['default'].weight, layer.lora_B['default'].weight]
    traced, concat_calls = CL.lora_linear_compiled, []

    def counted(*args):
        concat_calls.append(1)
        return traced(*args)

    CL.lora_linear_compiled = counted
    torch._dynamo.reset()
    try:
        results = []
        with routed('compile_concatcompiled'):
            for fn, fused in ((torch.compile(layer, fullgraph=True), True), (layer, False)):
                layer.fused = fused
                with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
                    out = fn(x)
                results.append((out, torch.autograd.grad(out.float().square().mean(), params)))
    finally:
        CL.lora_linear_compiled = traced
        torch._dynamo.reset()
    (out, got), (ref, want) = results
    return dict(path='compiled_concat', bits=bits, autocast=autocast, features=features, rows=rows,
                concat_calls=len(concat_calls), out=rel(out, ref), grad_x=rel(got[0], want[0]),
                grad_A=rel(got[1], want[1]), grad_B=rel(got[2], want[2]))


def run_compiled_dequant_case(bits: int, state_dtype, dtype: torch.dtype, features=(1024, 4096),
                              device: str = 'cuda') -> dict:
    """The weight as compiled code dequantizes it (torch ops inductor fuses) against eager: bitsandbytes' op for
    4-bit (in the state's dtype, then cast), our multiply for 8-bit; ``differing`` counts values whose bits differ."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(*features)).to(device)
    apply_lora(model, dict(r=16, targets=['0'], quantize_bits=bits, compute_dtype=state_dtype))
    base = model[0].base_layer
    torch._dynamo.reset()
    compiled = torch.compile(lambda: dequantize_weight(base, dtype), fullgraph=True)()
    torch._dynamo.reset()
    if bits == 4:
        import bitsandbytes.functional as BF
        want = BF.dequantize_4bit(base.weight.data, getattr(base.weight, 'quant_state', None) or base.quant_state)
        want = want.to(dtype)
    else:
        want = dequantize_weight(base, dtype)
    view = torch.int32 if dtype == torch.float32 else torch.int16  # compare bit patterns: -0.0 != 0.0
    return dict(path='compiled_dequant', bits=bits, state_dtype=state_dtype, dtype=str(dtype), values=want.numel(),
                differing=(compiled.view(view) != want.view(view)).sum().item())


def run_switch_case(switch: str, name: str, autocast: bool, p: float, features=(1024, 4096), rows: int = 1576) -> dict:
    """The layer with ``LF.<switch>`` as it is, against the same layer with it returning None (the torch way)."""
    torch.manual_seed(0)
    fn = torch.nn.LayerNorm(features[0]).cuda() if name == 'layernorm' else torch.nn.GELU()
    for param in fn.parameters():
        param.data.uniform_(0.5, 1.5).requires_grad_(False)
    x = (torch.randn(rows, features[0], device='cuda') * 3 + 1).requires_grad_()
    weight = torch.randn(features[1], features[0], device='cuda') / features[0] ** 0.5
    lora_a = torch.randn(16, features[0], device='cuda', requires_grad=True)
    lora_b = torch.randn(features[1], 16, device='cuda', requires_grad=True)

    def grads():
        torch.manual_seed(5)
        with torch.autocast('cuda', dtype=torch.bfloat16, enabled=autocast):
            out = LF.lora_linear(x, weight, None, lora_a, lora_b, 2.0, p, True, input_fn=fn)
        return (out, *torch.autograd.grad(out.float().square().mean(), (x, lora_a, lora_b)))

    inside = grads()
    kept = getattr(LF, switch)
    setattr(LF, switch, lambda *args: None)
    try:
        again = grads()
    finally:
        setattr(LF, switch, kept)
    return dict(path=switch, fn=name, autocast=autocast, dropout=p, out=rel(inside[0], again[0]),
                grad_x=rel(inside[1], again[1]), grad_A=rel(inside[2], again[2]), grad_B=rel(inside[3], again[3]))


if __name__ == '__main__':
    for bits in (4, 8):
        for state_dtype in (None, 'bf16'):
            for dtype in (torch.bfloat16, torch.float16, torch.float32):
                print(json.dumps(run_compiled_dequant_case(bits, state_dtype, dtype)), flush=True)
    for features in ((1024, 4096), (4096, 1024)):
        for bits in (None, 4, 8):
            for autocast in (False, True):
                print(json.dumps(run_compiled_case(bits, autocast, features)), flush=True)
    plain_max_rows = LF.PLAIN_MAX_ROWS
    LF.PLAIN_MAX_ROWS = 0  # the fused function, whatever the number of rows
    for name in ('layernorm', 'gelu'):
        for autocast in (False, True):
            for p in (0.0, 0.1):
                print(json.dumps(run_switch_case('kernel_prologue', name, autocast, p)), flush=True)
                # the operand [fn(x) | xa] from one kernel, against torch's fn (a wide layer, then a narrow one)
                print(json.dumps(run_switch_case('_fn_kernel_args', name, autocast, p)), flush=True)
                print(json.dumps(run_switch_case('_fn_kernel_args', name, autocast, p, (4096, 1024))), flush=True)
    for features in ((1024, 4096), (4096, 1024)):
        for autocast in (False, True):
            print(json.dumps(run_kernel_case(autocast, features)), flush=True)
    os.environ['OPENTAD_LORA_DROPOUT_KERNEL'] = 'torch'  # below: the reference's own mask
    for max_rows, path in ((0, 'fused'), (plain_max_rows, 'plain')):  # the cases below have 1576 rows
        LF.PLAIN_MAX_ROWS = max_rows
        for features in ((1024, 4096), (4096, 1024)):  # the wide forward GEMM, then the wide input-gradient GEMM
            for bits in (None, 4, 8):
                for autocast in (False, True):
                    for dropout in (0.0, 0.1):
                        if path == 'plain' and dropout:
                            continue  # dropout always takes the fused function
                        print(json.dumps(dict(path=path, **run_case(bits, autocast, dropout, features))), flush=True)
