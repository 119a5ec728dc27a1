"""Cost of one LoRA/QLoRA training step on a Qwen2-shaped LLM (CAD-Recode's decoder), ours against HF PEFT.

The model is built by transformers from a config with random bf16 weights (shapes are what matter): Qwen2-1.5B by
default, r16 on q/k/v/o/gate/up/down. Modes, all in ONE process on the same GPU:

* ``ours_lora`` / ``ours_qlora4``: :func:`opentad_lora.peft.apply_lora` (QLoRA: NF4 + double quant, bf16 compute);
* ``peft_lora`` / ``peft_qlora4``: HF PEFT on the same modules, QLoRA with bitsandbytes ``Linear4bit`` bases as
  ``BitsAndBytesConfig(load_in_4bit, nf4, double quant, bf16 compute)`` would build them.

Step = causal-LM loss on ``--batch`` x ``--tokens`` random tokens + backward + AdamW (median of ``--iters`` after
``--warmup``), peak memory from ``torch.cuda.max_memory_allocated`` (whole allocator blocks) and the peak of
requested bytes (``requested_peak_gib``, without the allocator's rounding); each mode with and without transformers'
gradient checkpointing (non-reentrant). One JSON line per (mode, checkpointing), with ratios to PEFT's same mode.

    python benchmarks/llm_step.py                                  # Qwen2-1.5B shape, 2 x 1024 tokens
    python benchmarks/llm_step.py --batch 4 --gc 1                 # gradient checkpointing only
    python benchmarks/llm_step.py --cpu-smoke                      # tiny model on CPU, checks the script
"""
import argparse
import gc
import json
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from opentad_lora.peft import apply_lora  # noqa: E402
from step_timer import time_steps  # noqa: E402  (this folder, on sys.path when run as a script)

TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']
MODES = ('peft_lora', 'ours_lora', 'peft_qlora4', 'ours_qlora4')
SHAPES = {
    'qwen2-1.5b': dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                       num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    'tiny': dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, tie_word_embeddings=True),
}


class CausalLMLoss(nn.Module):
    """``model(ids) -> loss``, so the shared step timer can drive a language model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, labels=input_ids).loss


def _swap_to_bnb_4bit(model: nn.Module) -> None:
    """Every targeted Linear becomes an NF4 ``Linear4bit`` (double quant, bf16 compute), as PEFT users load them."""
    import bitsandbytes as bnb
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and name in TARGETS:
                q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=torch.bfloat16, quant_type='nf4', compress_statistics=True,
                                      device=child.weight.device)
                q.weight = bnb.nn.Params4bit(child.weight.data.cpu(), requires_grad=False, quant_type='nf4',
                                             compress_statistics=True, module=q)
                if child.bias is not None:
                    q.bias = nn.Parameter(child.bias.data, requires_grad=False)
                setattr(module, name, q.to(child.weight.device))


def build(mode: str, shape: str, rank: int, dropout: float, gradient_checkpointing: bool, device: str) -> nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM
    config = Qwen2Config(**SHAPES[shape], attn_implementation='sdpa', use_cache=False)
    model = Qwen2ForCausalLM(config).to(device=device, dtype=torch.bfloat16)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=dict(use_reentrant=False))
    if mode.startswith('peft'):
        from peft import LoraConfig, get_peft_model
        if mode == 'peft_qlora4':
            _swap_to_bnb_4bit(model)
        model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=dropout,
                                                 target_modules=TARGETS))
    else:
        quant = dict(quantize_bits=4, compute_dtype='bf16') if mode == 'ours_qlora4' else {}
        apply_lora(model, dict(r=rank, alpha=2 * rank, dropout=dropout, targets=TARGETS, **quant))
    return CausalLMLoss(model).train()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--shape', default='qwen2-1.5b', choices=sorted(SHAPES))
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--tokens', type=int, default=1024)
    parser.add_argument('--rank', type=int, default=16)
    parser.add_argument('--lora-dropout', type=float, default=0.0)
    parser.add_argument('--gc', default='0,1', help='gradient checkpointing: 0, 1 or 0,1')
    parser.add_argument('--modes', default=','.join(MODES))
    parser.add_argument('--iters', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--cpu-smoke', action='store_true', help='tiny model, 1 step per mode, on CPU')
    args = parser.parse_args()
    device = 'cpu' if args.cpu_smoke else 'cuda'
    if args.cpu_smoke:
        args.shape, args.batch, args.tokens, args.iters, args.warmup = 'tiny', 1, 16, 1, 0
    for gradient_checkpointing in (flag == '1' for flag in args.gc.split(',')):
        rows = {}
        for mode in args.modes.split(','):
            torch.manual_seed(0)
            row = dict(mode=mode, shape=args.shape, batch=args.batch, tokens=args.tokens, rank=args.rank,
                       lora_dropout=args.lora_dropout, grad_ckpt=gradient_checkpointing)
            model = None
            try:
                model = build(mode, args.shape, args.rank, args.lora_dropout, gradient_checkpointing, device)
                ids = torch.randint(0, SHAPES[args.shape]['vocab_size'], (args.batch, args.tokens), device=device)
                seconds, peak = time_steps(model, ids, args.iters, args.warmup)
                row.update(ms=round(seconds * 1e3, 1), peak_gib=round(peak, 4) if peak is not None else None)
                if device == 'cuda':  # bytes asked for, without the caching allocator's block rounding
                    row['requested_peak_gib'] = round(torch.cuda.memory_stats()['requested_bytes.all.peak'] / 2**30, 4)
                peer = rows.get(mode.replace('ours', 'peft'))
                if mode.startswith('ours') and peer and 'ms' in peer:
                    row['time_vs_peft'] = round(row['ms'] / peer['ms'], 3)
                    if peak is not None:
                        row['mem_vs_peft'] = round(peak / peer['peak_gib'], 4)
            except Exception as err:  # one failing mode must not hide the others' numbers
                row['error'] = f'{type(err).__name__}: {err}'[:300]
            del model
            gc.collect()
            if device == 'cuda':
                torch.cuda.empty_cache()
            rows[mode] = row
            print(json.dumps(dict(row, gpu=torch.cuda.get_device_name() if device == 'cuda' else 'cpu',
                                  torch=torch.__version__)), flush=True)


if __name__ == '__main__':
    main()
