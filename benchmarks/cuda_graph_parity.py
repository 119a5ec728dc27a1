"""On a GPU: training whose model replays CUDA graphs (``GraphedForward``) against eager training of the same model.

Our ViT (``--depth`` blocks of width 384, LoRA r16 on qkv/proj/fc1/fc2, bf16 autocast, AdamW lr 1e-3), ``--steps``
optimizer steps of two micro-batches each (gradient accumulation), the same batches and initial weights in both
runs. Prints one JSON line per case: the largest relative difference of the per-micro-batch losses and of the
trainable weights after the last step, and the first and last loss of each run. Without dropout both runs compute
the same kernels on the same inputs, so they should agree to float rounding; with dropout the captured run draws
other masks (capture's warm-up passes advance the generator), so only its losses' fall is printed to compare.

    python benchmarks/cuda_graph_parity.py [--depth 4 --steps 6]
"""
import argparse
import copy
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from opentad_lora.engine.cuda_graph_hook import GraphedForward  # noqa: E402
from opentad_lora.models.backbones.vit import VisionTransformer  # noqa: E402
from opentad_lora.peft import apply_lora  # noqa: E402


def train(model: torch.nn.Module, batches, steps: int) -> tuple:
    """Losses of every micro-batch and the trainable weights after ``steps`` AdamW steps of two micro-batches."""
    params = [param for param in model.parameters() if param.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    losses = []
    for step in range(steps):
        for x in batches[2 * step:2 * step + 2]:
            with torch.autocast('cuda', dtype=torch.bfloat16):
                out = model(x)
            loss = (out.float() - 1.0).square().mean()
            loss.backward()
            losses.append(loss.detach())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return torch.stack(losses).cpu(), [param.detach().clone() for param in params]


def run_case(bits, with_cp: bool, dropout: float, depth: int, steps: int, batch: int) -> dict:
    torch.manual_seed(0)
    model = VisionTransformer(img_size=224, patch_size=16, embed_dim=384, depth=depth, num_heads=6,
                              with_cp=with_cp, out_type='cls').cuda()
    apply_lora(model, dict(r=16, alpha=32, targets=['qkv', 'proj', 'fc1', 'fc2'], dropout=dropout,
                           quantize_bits=bits, compute_dtype='bf16' if bits else None))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if 'lora_B' in name:
                param.normal_(0, 0.02)
    graphed = copy.deepcopy(model)
    GraphedForward(graphed, 'vit')
    batches = [torch.randn(batch, 3, 224, 224, device='cuda') for _ in range(2 * steps)]
    torch.manual_seed(1)
    eager_losses, eager_weights = train(model, batches, steps)
    torch.manual_seed(1)
    graphed_losses, graphed_weights = train(graphed, batches, steps)
    weight_diff = max(((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()
                      for a, b in zip(graphed_weights, eager_weights))
    loss_diff = ((graphed_losses - eager_losses).abs() / eager_losses.abs()).max().item()
    return dict(bits=bits, with_cp=with_cp, dropout=dropout, loss_rel=loss_diff, weights_rel=weight_diff,
                eager_loss=[round(eager_losses[0].item(), 5), round(eager_losses[-1].item(), 5)],
                graphed_loss=[round(graphed_losses[0].item(), 5), round(graphed_losses[-1].item(), 5)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--depth', type=int, default=4)
    parser.add_argument('--steps', type=int, default=6)
    parser.add_argument('--batch', type=int, default=16)
    args = parser.parse_args()
    for bits in (None, 4):
        for with_cp in (False, True):
            for dropout in (0.0, 0.1):
                try:
                    row = run_case(bits, with_cp, dropout, args.depth, args.steps, args.batch)
                except Exception as err:  # one failing case must not hide the others
                    row = dict(bits=bits, with_cp=with_cp, dropout=dropout, error=f'{type(err).__name__}: {err}'[:400])
                print(json.dumps(row), flush=True)


if __name__ == '__main__':
    main()
