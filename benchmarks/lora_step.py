"""Cost of one LoRA/QLoRA training step on a ViT, ours against HF PEFT, full fine-tuning and the frozen floor.

Every mode runs in ONE process on the same GPU, and every figure is reported as a ratio to the frozen-base floor
(forward + the backward that computes input gradients only). Step = forward + backward + AdamW, bf16 autocast,
median of ``--iters`` after ``--warmup`` steps, peak memory from ``torch.cuda.max_memory_allocated``. The model is
timm's ``VisionTransformer`` (as in shared/bench/anchor_lora_step.py) so PEFT and our layers wrap the same modules.

    python benchmarks/lora_step.py --arch vit_b --batch 128
    python benchmarks/lora_step.py --arch vit_h --batch 64 --modes floor,full,peft_lora,ours_lora
    python benchmarks/lora_step.py --model ours --modes floor,ours_lora,ours_qlora4   # our ViT blocks

``floor_bf16base`` / ``ours_lora_bf16base`` store the targeted frozen weights in bf16 (``LoRAConfig.base_dtype``);
compare them with each other: the float32 floor pays a cast of every weight per step that they do not.
A mode name ending in ``_compile`` is that mode under ``torch.compile``; ``_compile_cudagraphs`` adds
``mode='reduce-overhead'`` (the step's kernels replayed as CUDA graphs, which removes the host's per-kernel cost).
``_graphed`` after a mode replays the eager model's forward and backward as CUDA graphs (``GraphedForward``,
what ``tools/train.py --cuda-graph`` does to the backbone; the AdamW step stays eager).
``_notriton``/``_plain``/``_fusedcompiled`` after a mode route its LoRA layers another way (``routing.py``).
Prints one JSON line per mode as it finishes (ratios need ``floor``/``floor_bf16base``/``infer_base`` listed
first); ``--cpu-smoke`` runs two tiny steps of every mode on CPU to check the script.
"""
import argparse
import copy
import gc
import json
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from opentad_lora.peft import apply_lora, merge_and_unload  # noqa: E402
from routing import routed  # noqa: E402  (this folder, on sys.path when run as a script)
from step_timer import time_steps  # noqa: E402

ARCHS = {
    'vit_h': dict(img_size=(256, 192), patch_size=16, embed_dim=1280, depth=32, num_heads=16),
    'vit_b': dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12),
    'vit_s': dict(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6),  # AdaTAD's seed width
    'tiny': dict(img_size=32, patch_size=16, embed_dim=64, depth=2, num_heads=2),
}
TARGETS = ['qkv', 'proj', 'fc1', 'fc2']
MODES = ('floor', 'full', 'peft_lora', 'peft_qlora4', 'ours_lora', 'ours_lora_unfused', 'ours_qlora4',
         'ours_qlora8', 'ours_lora_compile', 'ours_lora_compile_cudagraphs', 'ours_qlora4_compile',
         'floor_bf16base', 'ours_lora_bf16base', 'infer_base', 'infer_merged')
# A mode ending in one of these is the mode before it, torch.compile-d with these keyword arguments
# ('reduce-overhead' replays the step's kernels as CUDA graphs: no host cost per kernel)
COMPILE_SUFFIXES = {'_compile_cudagraphs': dict(mode='reduce-overhead'), '_compile': {}}
GRAPHED_SUFFIX = '_graphed'  # the eager model captured and replayed by GraphedForward


def build(arch: str, model: str = 'timm') -> nn.Module:
    """timm's ViT (the anchor's model) when timm imports, else ours (same module names and shapes).

    ``model='ours'`` takes our ViT in any case: its blocks hand their norms and GELU to the LoRA layers
    (:func:`opentad_lora.peft.linear_after`), so on CUDA those layers take the kernels that apply them
    (``dropout_kernels.fn_xa``), which timm's blocks, applying them before the layer, cannot use."""
    if model == 'timm':
        try:
            from timm.models.vision_transformer import VisionTransformer
            return VisionTransformer(num_classes=0, global_pool='avg', **ARCHS[arch])
        except Exception:  # timm needs torchvision, which CPU-only machines may lack
            pass
    from opentad_lora.models.backbones.vit import VisionTransformer
    return VisionTransformer(out_type='cls', **ARCHS[arch])


def _peft_qlora_swap(model: nn.Module) -> None:
    """What the anchor does for PEFT+bnb: every targeted Linear becomes an NF4 Linear4bit before PEFT wraps it."""
    import bitsandbytes as bnb
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and child_name in TARGETS and not name.startswith('patch_embed'):
                q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=torch.bfloat16, quant_type='nf4', compress_statistics=True)
                q.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, quant_type='nf4',
                                             compress_statistics=True)
                if child.bias is not None:
                    q.bias = nn.Parameter(child.bias.data, requires_grad=False)
                setattr(module, child_name, q)


def prepare(mode: str, model: nn.Module, rank: int, device: str) -> nn.Module:
    """Turn a fresh float model into the model of ``mode`` on ``device``."""
    if mode.endswith(GRAPHED_SUFFIX):
        from opentad_lora.engine.cuda_graph_hook import GraphedForward  # imports MMEngine: only for these modes
        model = prepare(mode[:-len(GRAPHED_SUFFIX)], model, rank, device)
        GraphedForward(model, mode)
        return model
    for suffix, compile_kwargs in COMPILE_SUFFIXES.items():
        if mode.endswith(suffix):
            return torch.compile(prepare(mode[:-len(suffix)], model, rank, device), **compile_kwargs)
    lora = dict(r=rank, alpha=2 * rank, targets=TARGETS)  # as PEFT's list: also the patch-embedding conv 'proj'
    if mode == 'floor_bf16base':  # the floor of ours_lora_bf16base: the same weights stored in bf16
        for name, module in model.named_modules():
            if name.rpartition('.')[2] in TARGETS:
                module.to(torch.bfloat16)
        mode = 'floor'
    if mode in ('floor', 'infer_base'):
        return model.to(device).requires_grad_(False)
    if mode == 'full':
        return model.to(device)
    if mode.startswith('peft'):
        from peft import LoraConfig, get_peft_model
        if mode == 'peft_qlora4':
            _peft_qlora_swap(model)
        return get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS)).to(device)
    model = model.to(device)
    if mode == 'ours_lora_bf16base':  # LoRAConfig.base_dtype: frozen bases stored in bf16
        apply_lora(model, dict(lora, base_dtype='bf16'))
    elif mode == 'ours_qlora4':
        apply_lora(model, dict(lora, quantize_bits=4, compute_dtype='bf16'))
    elif mode == 'ours_qlora8':
        apply_lora(model, dict(lora, quantize_bits=8, compute_dtype='bf16'))
    else:
        apply_lora(model, lora)
    if mode == 'ours_lora_unfused':
        for module in model.modules():
            if hasattr(module, 'fused'):
                module.fused = False
    if mode == 'infer_merged':
        with torch.no_grad():
            for name, param in model.named_parameters():
                if 'lora_B' in name:
                    param.normal_(0, 0.01)
        model = merge_and_unload(model).requires_grad_(False)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--arch', default='vit_b', choices=sorted(ARCHS))
    parser.add_argument('--batch', type=int, default=128)
    parser.add_argument('--rank', type=int, default=16)
    parser.add_argument('--iters', type=int, default=15)
    parser.add_argument('--warmup', type=int, default=5)
    parser.add_argument('--modes', default=','.join(MODES))
    parser.add_argument('--model', default='timm', choices=('timm', 'ours'), help="whose ViT blocks (see build)")
    parser.add_argument('--cpu-smoke', action='store_true', help='tiny model, 2 steps per mode, on CPU')
    args = parser.parse_args()
    if args.cpu_smoke:
        args.arch, args.batch, args.iters, args.warmup, device = 'tiny', 2, 1, 1, 'cpu'
    else:
        device = 'cuda'
        torch.backends.cuda.matmul.allow_tf32 = True
    size = ARCHS[args.arch]['img_size']
    height, width = size if isinstance(size, tuple) else (size, size)
    torch.manual_seed(0)
    reference = build(args.arch, args.model)
    baselines = {}  # 'floor' and 'infer_base' ms, for the ratios of the modes after them
    for mode in args.modes.split(','):
        torch.manual_seed(0)
        if device == 'cuda':
            gc.collect()  # a graphed model is a reference cycle (module -> forward -> module): free its graphs now
            torch.cuda.empty_cache()
        x = torch.randn(args.batch, 3, height, width, device=device, requires_grad=mode.startswith('floor'))
        try:
            with routed(mode) as built:
                model = prepare(built, copy.deepcopy(reference), args.rank, device)
                seconds, peak = time_steps(model, x, args.iters, args.warmup, train=not built.startswith('infer'))
            # a CUDA graph's pool is reserved, not allocated, between replays: its peak shows in the reserved one
            reserved = torch.cuda.max_memory_reserved() / 2**30 if device == 'cuda' else None
            row = dict(ms=round(seconds * 1e3, 2), peak_gib=round(peak, 2) if peak is not None else None,
                       reserved_gib=round(reserved, 2) if reserved is not None else None,
                       trainable=sum(p.numel() for p in model.parameters() if p.requires_grad))
            if mode in ('floor', 'floor_bf16base', 'infer_base'):
                baselines[mode] = row['ms']
            base = baselines.get('infer_base' if built.startswith('infer') else
                                 'floor_bf16base' if built.endswith('bf16base') else 'floor')
            if base:
                row['ratio'] = round(row['ms'] / base, 3)
        except Exception as err:  # one failing mode must not hide the others' numbers
            row = dict(error=f'{type(err).__name__}: {err}'[:300])
        model = None
        # printed as soon as measured: a run cut short by a time limit keeps the modes it finished
        print(json.dumps(dict(mode=mode, arch=args.arch, model=args.model, batch=args.batch, rank=args.rank, **row,
                              gpu=torch.cuda.get_device_name() if device == 'cuda' else 'cpu',
                              torch=torch.__version__)), flush=True)

if __name__ == '__main__':
    main()
