"""AdaTAD backbone over a long window: peak memory and step time of each way to fine-tune it, in ONE process.

Modes (all on our ``VisionTransformerAdapter``/``VisionTransformerQLoRA``, TIA adapters after every block):

* ``adapter``: AdaTAD's baseline, frozen float ViT + adapters (every ratio is relative to it);
* ``qlora4`` / ``qlora8``: adapters + LoRA r16 on qkv/proj/fc1/fc2 with NF4 (bf16 compute) / int8 frozen bases;
* ``lora``: adapters + LoRA r16 on a float base;
* ``full``: full fine-tuning (ViT and adapters);
* ``peft_lora``: adapters + HF PEFT LoRA r16 on the same modules (the peer a user would pick; needs ``peft``).

A mode may end in ``@bf16`` or ``@fp8``: the memory-saving mode, block inputs kept compressed for the
recomputation (``checkpoint_storage``; needs ``--cp 1``), e.g. ``qlora4@fp8``. LoRA dropout is the seed's 0.1
unless ``--lora-dropout`` says otherwise.

Step = forward + backward + AdamW under bf16 autocast; median of ``--iters`` after ``--warmup`` steps; peak memory
from ``torch.cuda.max_memory_allocated`` (weights + optimizer state + activations). One JSON line per
(arch, checkpointing, mode), with ``time_vs_adapter`` / ``mem_vs_adapter`` when the baseline ran first.

    python benchmarks/adatad_memory.py                          # ViT-S and ViT-B, 768 frames, 160², cp on and off
    python benchmarks/adatad_memory.py --archs l,h --batch 1 --cp 1 --bf16-weights
    python benchmarks/adatad_memory.py --archs g --batch 1 --cp 1 --bf16-weights --modes adapter,qlora4,qlora4@fp8
    python benchmarks/adatad_memory.py --tiny                   # CPU smoke test: tiny model, one step per mode
"""
import argparse
import gc
import json
import sys
from datetime import date
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from opentad_lora.models.backbones.vit_adapter import (VisionTransformerAdapter,  # noqa: E402
                                                       VisionTransformerQLoRA, is_adapter_param)
from step_timer import time_steps  # noqa: E402  (this folder, on sys.path when run as a script)

ARCHS = dict(s='small', b='base', l='large', h='huge', g='giant')
MODES = ('adapter', 'qlora4', 'qlora8', 'lora', 'full', 'peft_lora')
TARGETS = ['qkv', 'proj', 'fc1', 'fc2']
TINY = dict(img_size=32, patch_size=16, embed_dims=32, depth=2, num_heads=2, mlp_ratio=4, num_frames=8)


def build(mode: str, arch: str, frames: int, with_cp: bool, tiny: bool, lora_dropout: float) -> nn.Module:
    """The backbone of ``mode`` (float weights are random: memory and time do not depend on their values)."""
    mode, _, storage = mode.partition('@')
    size = dict(TINY) if tiny else dict(arch=ARCHS[arch], img_size=224, num_frames=16)
    common = dict(size, total_frames=frames, with_cp=with_cp, drop_path_rate=0.1, checkpoint_storage=storage or None)
    if mode.startswith('qlora') or mode == 'lora':
        bits = {'qlora4': 4, 'qlora8': 8, 'lora': None}[mode]
        return VisionTransformerQLoRA(**common, lora_r=16, lora_alpha=32, lora_dropout=lora_dropout,
                                      quantize_bits=bits, lora_cfg=dict(compute_dtype='bf16') if bits == 4 else None)
    model = VisionTransformerAdapter(**common)
    if mode == 'full':
        model.requires_grad_(True)
    elif mode == 'peft_lora':
        from peft import LoraConfig, inject_adapter_in_model
        pattern = r'.*blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)'
        inject_adapter_in_model(LoraConfig(r=16, lora_alpha=32, lora_dropout=lora_dropout, target_modules=pattern),
                                model)
        for name, param in model.named_parameters():
            param.requires_grad_(is_adapter_param(name) or 'lora_' in name)
    elif mode != 'adapter':
        raise ValueError(f'Unknown mode {mode!r}; choose from {MODES}.')
    return model


def cast_frozen_to_bf16(model: nn.Module) -> None:
    """Keep frozen float weight matrices/kernels in bf16 (norms, biases, quantized and trainable tensors stay)."""
    for param in model.parameters():
        if not param.requires_grad and param.dtype == torch.float32 and param.dim() >= 2:
            param.data = param.data.to(torch.bfloat16)


def measure(model: nn.Module, x: torch.Tensor, iters: int, warmup: int) -> Dict[str, Any]:
    """Median step time (ms) and peak memory (GiB, CUDA only) of forward + backward + AdamW."""
    seconds, peak = time_steps(model, x, iters, warmup)
    return dict(step_ms=round(seconds * 1e3, 1), peak_gib=round(peak, 3) if peak is not None else None,
                trainable=sum(p.numel() for p in model.parameters() if p.requires_grad))


def environment(device: torch.device) -> Dict[str, Any]:
    try:
        import bitsandbytes
        bnb_version = bitsandbytes.__version__
    except ImportError:
        bnb_version = None
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'
    return dict(device=name, torch=torch.__version__, bitsandbytes=bnb_version, date=date.today().isoformat())


def run(args: argparse.Namespace) -> List[Dict[str, Any]]:
    device = torch.device('cpu' if args.tiny else 'cuda')
    env = environment(device)
    rows = []
    for arch in args.archs.split(','):
        for with_cp in (c == '1' for c in args.cp.split(',')):
            baseline: Optional[Dict[str, Any]] = None
            for mode in args.modes.split(','):
                torch.manual_seed(0)
                row = dict(arch=arch, frames=args.frames, img=args.img, batch=args.batch, cp=with_cp, mode=mode,
                           bf16_weights=args.bf16_weights, lora_dropout=args.lora_dropout)
                model = None
                try:
                    with device:  # build (and quantize) on the device: ViT-g on CPU would take minutes
                        model = build(mode, arch, args.frames, with_cp, args.tiny, args.lora_dropout)
                    if args.bf16_weights and mode != 'full':
                        cast_frozen_to_bf16(model)
                    model = model.to(device).train()
                    x = torch.randn(args.batch, 3, args.frames, args.img, args.img, device=device)
                    row.update(measure(model, x, args.iters, args.warmup))
                    if mode == 'adapter':
                        baseline = row
                    elif baseline is not None:
                        row['time_vs_adapter'] = round(row['step_ms'] / baseline['step_ms'], 3)
                        if row['peak_gib'] is not None:
                            row['mem_vs_adapter'] = round(row['peak_gib'] / baseline['peak_gib'], 3)
                except torch.OutOfMemoryError:
                    row['error'] = 'OOM'
                except Exception as err:  # report and go on with the next configuration
                    row['error'] = f'{type(err).__name__}: {err}'[:300]
                del model
                gc.collect()
                if device.type == 'cuda':
                    torch.cuda.empty_cache()
                row.update(env)
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--archs', default='s,b', help=f'comma list of {sorted(ARCHS)}')
    parser.add_argument('--frames', type=int, default=768, help='window length (a multiple of 16)')
    parser.add_argument('--img', type=int, default=160, help='frame size')
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--modes', default='adapter,qlora4,qlora8,lora,full,peft_lora',
                        help=f'comma list of {MODES}; put adapter first to get the ratios')
    parser.add_argument('--cp', default='1,0', help='activation checkpointing: 1, 0 or 1,0')
    parser.add_argument('--lora-dropout', type=float, default=0.1, help="LoRA dropout (the seed's 0.1)")
    parser.add_argument('--iters', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--bf16-weights', action='store_true', help='keep frozen float weights in bf16')
    parser.add_argument('--tiny', action='store_true', help='CPU smoke test: tiny model, 16 frames of 32², 1 step')
    args = parser.parse_args(argv)
    if args.tiny:
        args.archs, args.frames, args.img, args.batch, args.iters, args.warmup = 's', 16, 32, 1, 1, 0
    return args


if __name__ == '__main__':
    run(parse_args())
