"""LoRA layers under ``torch.compile`` inside checkpointed blocks: one graph, no graph break, eager's numbers.

A graph break inside ``torch.utils.checkpoint`` makes dynamo run the whole checkpointed block eagerly. The plain
path's shared cast cache did that ("HOP: Unsafe side effect": it set module state inside the block). Before torch
2.12 no autograd function may be in the graph either (the fused one, QLoRA's dequantizing linear): inductor kept
what they saved instead of recomputing the checkpointed blocks (6.8x the memory on an H200, benchmarks/RESULTS.md),
which CPU runs do not show. From 2.12 LoRA layers on frozen bases (float or quantized) take
``compiled_lora.LoRAConcatGEMM``; no other autograd function is ever in the graph.
Backend ``aot_eager``: AOTAutograd traces forward and backward as inductor would be given them, and runs aten ops.
"""
import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from opentad_lora.peft import apply_lora
from opentad_lora.peft import compiled_lora as CL
from opentad_lora.peft import functional as LF


class _Block(nn.Module):
    """Two LoRA layers reading one float32 norm output under bf16 autocast: the input the cast cache shares."""

    def __init__(self) -> None:
        super().__init__()
        self.norm, self.q, self.k, self.out = nn.LayerNorm(32), nn.Linear(32, 32), nn.Linear(32, 32), nn.Linear(32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        return x + self.out(self.q(h) * self.k(h))


class _Checkpointed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([_Block(), _Block()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False)
        return x


@pytest.mark.parametrize('bases', [{}, dict(base_dtype='bfloat16'), dict(quantize_bits=4)],
                         ids=['float32_bases', 'bf16_bases', 'nf4_bases'])
@pytest.mark.parametrize('plain_max_rows', [10 ** 9, 0], ids=['eager_plain_ops', 'eager_fused_function'])
@pytest.mark.parametrize('concat', [True, False], ids=['torch_2_12', 'before_2_12'])
def test_checkpointed_lora_blocks_compile_to_one_graph_with_eager_numbers(monkeypatch, autograd_functions_in,
                                                                          plain_max_rows, bases, concat):
    monkeypatch.setattr(LF, 'PLAIN_MAX_ROWS', plain_max_rows)
    monkeypatch.setattr(CL, 'AUTOGRAD_FUNCTIONS_RECOMPUTED', concat)
    monkeypatch.setattr(CL, 'CONCAT_MIN_ROWS', 0)  # 30 rows here
    torch.manual_seed(0)
    model = _Checkpointed()
    apply_lora(model, dict(r=4, alpha=8, targets=['q', 'k', 'out'], **bases))
    for name, param in model.named_parameters():
        if 'lora_B' in name:
            nn.init.normal_(param, std=0.1)  # LoRA's output is not zero
    x = torch.randn(3, 10, 32)

    def loss_and_grads():
        with torch.autocast('cpu', dtype=torch.bfloat16):
            loss = model(x).float().square().mean()
        params = [p for p in model.parameters() if p.requires_grad]
        return [loss.detach(), *torch.autograd.grad(loss, params)]

    eager = loss_and_grads()
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons
    assert autograd_functions_in(explained.graphs[0]) == ['LoRAConcatGEMM'] * (6 if concat else 0)
    # the low-rank product is added, not addmm-ed: inductor runs addmm as a copy of the base output + a GEMM
    assert [node for module in explained.graphs[0].modules() if isinstance(module, torch.fx.GraphModule)
            for node in module.graph.nodes if 'addmm' in str(node.target)] == []
    compiled_forward = torch.compile(model.forward, backend='aot_eager', fullgraph=True)
    monkeypatch.setattr(model, 'forward', compiled_forward)
    compiled = loss_and_grads()
    torch._dynamo.reset()
    for got, want in zip(compiled, eager):
        torch.testing.assert_close(got, want, rtol=2e-2, atol=1e-3)
