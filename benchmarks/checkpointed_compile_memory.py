"""What a whole-compiled, activation-checkpointed LoRA ViT keeps for backward: eager against compiled routings.

Inductor keeps what autograd functions inside checkpointed blocks compute, instead of recomputing it, on torch < 2.12
(pytorch#177396): the probe behind ``compiled_lora.AUTOGRAD_FUNCTIONS_RECOMPUTED``. One JSON line per mode: the
bytes of the distinct tensors autograd keeps for backward (counted by saved-tensor hooks, parameters excluded), the
step's peak memory over the model, and the median step time. bf16 autocast, ``out.float().sum().backward()``.
Modes: ``eager`` or ``compile`` with a suffix of ``routing.py`` (e.g. ``compile_plaincompiled``,
``compile_concatcompiled``). Only a GPU has shown the difference; CPU runs check the script.

    python benchmarks/checkpointed_compile_memory.py --modes eager,compile,compile_plaincompiled,compile_concatcompiled
    python benchmarks/checkpointed_compile_memory.py --quantize-bits 4   # QLoRA-4 bases
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from opentad_lora.models.backbones.vit import VisionTransformer  # noqa: E402
from opentad_lora.peft import apply_lora  # noqa: E402
from routing import routed  # noqa: E402  (this folder, on sys.path when run as a script)


def step(model: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        out = model(x)
    out.float().sum().backward()


def kept_bytes_and_peak(model: torch.nn.Module, x: torch.Tensor) -> dict:
    """Saved-for-backward bytes of one step (parameters excluded) and its peak memory over the model (CUDA)."""
    saved = {}

    def pack(tensor):
        if not isinstance(tensor, torch.nn.Parameter):
            saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    cuda = x.is_cuda
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        step(model, x)
    row = dict(kept_mb=round(sum(saved.values()) / 2**20, 1), kept_tensors=len(saved))
    if cuda:
        torch.cuda.synchronize()
        row['step_peak_mb'] = round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--modes', default='eager,compile,compile_plaincompiled')
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--iters', type=int, default=10)
    parser.add_argument('--quantize-bits', type=int, choices=(4, 8), help='QLoRA bases (default: float)')
    parser.add_argument('--cpu-smoke', action='store_true', help='a 2-block ViT on 64x64 images, on CPU')
    args = parser.parse_args()
    device = 'cpu' if args.cpu_smoke else 'cuda'
    arch = dict(img_size=64, depth=2) if args.cpu_smoke else dict(img_size=224, depth=12)  # ViT-S, AdaTAD's width
    batch, iters = (2, 1) if args.cpu_smoke else (args.batch, args.iters)
    for mode in args.modes.split(','):
        with routed(mode) as built:
            torch.manual_seed(0)
            model = VisionTransformer(out_type='cls', patch_size=16, embed_dim=384, num_heads=6, with_cp=True, **arch)
            apply_lora(model, dict(r=16, alpha=32, targets=['qkv', 'proj', 'fc1', 'fc2'],
                                   quantize_bits=args.quantize_bits))
            model = model.to(device).train()
            run = torch.compile(model) if built == 'compile' else model
            x = torch.randn(batch, 3, arch['img_size'], arch['img_size'], device=device)
            for _ in range(2):  # compile and warm up
                step(run, x)
            row = kept_bytes_and_peak(run, x)
            times = []
            for _ in range(iters):  # timed without the counting hooks
                start = time.perf_counter()
                step(run, x)
                if device == 'cuda':
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
            model.zero_grad(set_to_none=True)
        print(json.dumps(dict(mode=mode, bits=args.quantize_bits, batch=batch, **row,
                              step_ms=round(statistics.median(times) * 1e3, 2), torch=torch.__version__)), flush=True)
        torch._dynamo.reset()


if __name__ == '__main__':
    main()
