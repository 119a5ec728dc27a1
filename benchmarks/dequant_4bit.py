"""4-bit dequantization of ViT layer weights: bitsandbytes' ops against the one-launch Triton kernel (nf4_kernels).

Prints one JSON line per (layer shape, mode): ``host_us`` (Python + launch time per call, measured while the GPU is
held busy by a sleep kernel, so the host never waits on it), ``gpu_us`` (GPU time per call: the calls queued behind
the sleep run back to back), and whether the result is bit-identical to bitsandbytes'. Modes:

* ``weight``: ``dequantize_weight(layer, bf16)``: ``bnb`` (nested absmax, ``+= offset``, 4-bit op) vs ``kernel``;
* ``operand``: the fused LoRA function's ``[W | sB]`` operand: ``bnb`` = ``torch.cat([W, sB], 1)`` after it, vs
  ``kernel`` = ``W`` written into ``buffer[:, :K]`` and ``sB`` copied into ``buffer[:, K:]``.

A last line checks bit-identity for nf4/fp4 x nested or not x float32/bf16/fp16 on ViT and odd shapes.

    python benchmarks/dequant_4bit.py              # on a GPU (needs bitsandbytes and Triton)
    python benchmarks/dequant_4bit.py --cpu-smoke  # tiny shapes on CPU through Triton's interpreter: checks the script
"""
import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

if '--cpu-smoke' in sys.argv:  # Triton decides to interpret when it is first imported
    os.environ.setdefault('TRITON_INTERPRET', '1')

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from opentad_lora.peft import dequantize_weight, quantize_linear  # noqa: E402

# nn.Linear (in, out) of ViT-B/16 and ViT-H/14 blocks: qkv, proj, fc1, fc2
VIT_LAYERS = ((768, 2304), (768, 768), (768, 3072), (3072, 768), (1280, 3840), (1280, 1280), (1280, 5120),
              (5120, 1280))
RANK = 16


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.view(torch.int32 if tensor.dtype == torch.float32 else torch.int16)


def _use(way: str) -> None:
    """Route ``dequantize_weight`` through bitsandbytes' ops (``'bnb'``) or the kernel (interpreted on CPU)."""
    kernel = 'kernel' if torch.cuda.is_available() else 'interpret'
    os.environ['OPENTAD_LORA_DEQUANT_KERNEL'] = 'bnb' if way == 'bnb' else kernel


def _call(mode: str, way: str, layer, scaled_b: torch.Tensor, dtype: torch.dtype):
    """One call of ``mode`` done ``way``; returns the weight part of its result."""
    if mode == 'weight':
        return dequantize_weight(layer, dtype)
    width = layer.in_features
    if way == 'bnb':
        return torch.cat([dequantize_weight(layer, dtype), scaled_b], dim=1)[:, :width]
    buffer = torch.empty(layer.out_features, width + scaled_b.shape[1], device=scaled_b.device, dtype=dtype)
    buffer[:, width:].copy_(scaled_b)
    return dequantize_weight(layer, dtype, buffer[:, :width])


def time_calls(fn, calls: int) -> dict:
    """Host and GPU microseconds per call of ``fn`` (GPU held busy while the host queues the calls)."""
    for _ in range(3):
        fn()
    if not torch.cuda.is_available():
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return dict(host_us=round((time.perf_counter() - start) / calls * 1e6, 1), gpu_us=None)
    torch.cuda.synchronize()
    begin, end, slept = (torch.cuda.Event(enable_timing=True) for _ in range(3))
    torch.cuda._sleep(200_000_000)  # ~0.1 s at 2 GHz: far longer than the host needs to queue the calls
    slept.record()
    begin.record()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    host = time.perf_counter() - start
    end.record()
    outran = slept.query()  # the sleep ended before the host had queued every call: gpu_us includes host gaps
    torch.cuda.synchronize()
    return dict(host_us=round(host / calls * 1e6, 2), gpu_us=round(begin.elapsed_time(end) / calls * 1e3, 2),
                host_outran_sleep=outran)


def bench(layers, calls: int, device: str) -> None:
    dtype = torch.bfloat16
    for (fan_in, fan_out), mode in itertools.product(layers, ('weight', 'operand')):
        torch.manual_seed(0)
        layer = quantize_linear(torch.nn.Linear(fan_in, fan_out, device=device), 4, 'nf4', True)
        scaled_b = torch.randn(fan_out, RANK, device=device, dtype=dtype)
        results = {}
        for way in ('bnb', 'kernel'):
            _use(way)
            results[way] = _call(mode, way, layer, scaled_b, dtype).clone()
            line = dict(layer=[fan_in, fan_out], weight_shape=[fan_out, fan_in], mode=mode, way=way,
                        **time_calls(lambda: _call(mode, way, layer, scaled_b, dtype), calls))
            line['bit_identical'] = bool(torch.equal(_bits(results[way]), _bits(results['bnb'])))
            print(json.dumps(line), flush=True)


def exactness(shapes, device: str) -> None:
    """Bit-identity of the kernel with bitsandbytes' ops over every quant type, nesting and output dtype."""
    failures, cases = [], 0
    for (fan_in, fan_out), quant_type, nested in itertools.product(shapes, ('nf4', 'fp4'), (True, False)):
        torch.manual_seed(fan_in + fan_out)
        linear = torch.nn.Linear(fan_in, fan_out, device=device)
        linear.weight.data.mul_(torch.logspace(-3, 3, fan_out, device=device).unsqueeze(1))
        layer = quantize_linear(linear, 4, quant_type, nested)
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            _use('bnb')
            expected = dequantize_weight(layer, dtype)
            _use('kernel')
            cases += 1
            if not torch.equal(_bits(dequantize_weight(layer, dtype)), _bits(expected)):
                failures.append([fan_in, fan_out, quant_type, nested, str(dtype)])
    print(json.dumps(dict(exactness_cases=cases, failures=failures)), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--cpu-smoke', action='store_true', help='tiny shapes on CPU through the interpreter')
    parser.add_argument('--calls', type=int, default=200, help='timed calls per mode')
    args = parser.parse_args()
    if args.cpu_smoke:
        bench(((64, 96),), 2, 'cpu')
        exactness(((30, 20), (64, 32)), 'cpu')  # even rows only: bnb's CPU op compiles torch code for odd ones
        return
    assert torch.cuda.is_available(), 'needs a GPU (or --cpu-smoke)'
    bench(VIT_LAYERS, args.calls, 'cuda')
    exactness(((768, 2304), (1280, 5120), (30, 20), (9, 7)), 'cuda')


if __name__ == '__main__':
    main()
