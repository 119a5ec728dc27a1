"""``LoRAConfig.base_dtype``: frozen bases stored in bfloat16.

Under bf16 autocast every base weight is rounded to bf16 before its GEMM anyway, so a bf16 base must train exactly
as the float32 one (bit for bit, on every path) while keeping no cast copy of the weight for backward. Outside
autocast the base computes in the input's dtype: exactly the float32 model whose bases were rounded to bf16.
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from opentad_lora.engine.fsdp import check_fsdp_dtypes
from opentad_lora.peft import LoRAConfig, apply_lora, merge_and_unload
from opentad_lora.peft import functional as LF
from opentad_lora.peft.layers import LoRALayer, LoRALinear

TARGETS = ['conv', 'wide', 'narrow']
PATHS = ['plain', 'fused', 'fused_dropout', 'reference']


class _Net(nn.Module):
    """A conv, a LayerNorm, a wide linear (output >= 2x input: the concatenated GEMM), GELU, a narrow linear, and an
    untargeted head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm = nn.Conv2d(3, 8, 3, padding=1), nn.LayerNorm(8)
        self.wide, self.narrow, self.head = nn.Linear(8, 32), nn.Linear(32, 8), nn.Linear(8, 4)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        tokens = self.conv(image).flatten(2).transpose(1, 2)
        return self.head(self.narrow(F.gelu(self.wide(self.norm(tokens)))))


def _lora_net(path: str, monkeypatch, **lora) -> nn.Module:
    """The seeded ``_Net`` with LoRA (B non-zero) on the path's settings."""
    monkeypatch.setattr(LF, 'PLAIN_MAX_ROWS', 10 ** 9 if path == 'plain' else 0)
    torch.manual_seed(0)
    model = _Net()
    apply_lora(model, dict(r=4, alpha=8, targets=TARGETS, dropout=0.1 if path == 'fused_dropout' else 0.0, **lora))
    torch.manual_seed(1)
    for name, param in model.named_parameters():
        if 'lora_B' in name:
            nn.init.normal_(param, std=0.1)
    for module in model.modules():
        if isinstance(module, LoRALinear):
            module.fused = path != 'reference'
    return model


def _train(model: nn.Module, autocast: bool, steps: int = 3):
    """Losses, input gradients and final trainable parameters of ``steps`` AdamW steps on fixed data."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    image = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(2), requires_grad=True)
    losses, image_grads = [], []
    torch.manual_seed(3)  # LoRA dropout's masks
    for _ in range(steps):
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            loss = model(image).float().square().mean()
        optimizer.zero_grad()
        image.grad = None
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
        image_grads.append(image.grad.clone())
    return losses, image_grads, {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_only_the_lora_bases_are_stored_in_the_base_dtype(monkeypatch):
    model = _lora_net('fused', monkeypatch, base_dtype='bf16')
    dtypes = {name: param.dtype for name, param in model.named_parameters()}
    assert {n for n, d in dtypes.items() if d == torch.bfloat16} == {
        f'{layer}.base_layer.{p}' for layer in TARGETS for p in ('weight', 'bias')}
    assert all(dtypes[n] == torch.float32 for n in dtypes if 'lora_' in n or n.startswith(('norm', 'head')))


@pytest.mark.parametrize('path', PATHS)
def test_under_bf16_autocast_a_bf16_base_trains_bit_for_bit_as_the_float32_one(path, monkeypatch):
    float_base = _train(_lora_net(path, monkeypatch), autocast=True)
    bf16_base = _train(_lora_net(path, monkeypatch, base_dtype='bfloat16'), autocast=True)
    for float_loss, bf16_loss in zip(float_base[0], bf16_base[0]):
        assert torch.equal(float_loss, bf16_loss)
    for float_grad, bf16_grad in zip(float_base[1], bf16_base[1]):
        assert torch.equal(float_grad, bf16_grad)
    assert float_base[2].keys() == bf16_base[2].keys()
    for name, value in float_base[2].items():
        assert torch.equal(value, bf16_base[2][name]), name
    assert float_base[0][-1] < float_base[0][0]


@pytest.mark.parametrize('path', [*PATHS, 'adapters_disabled'])
def test_without_autocast_a_bf16_base_computes_as_float32_with_bf16_rounded_weights(path, monkeypatch):
    rounded = _lora_net('fused' if path == 'adapters_disabled' else path, monkeypatch)
    with torch.no_grad():
        for name, param in rounded.named_parameters():
            if name.split('.')[0] in TARGETS and 'base_layer' in name:
                param.copy_(param.to(torch.bfloat16).float())
    bf16_base = _lora_net('fused' if path == 'adapters_disabled' else path, monkeypatch, base_dtype='bfloat16')
    for model in (rounded, bf16_base):
        for module in model.modules():
            if isinstance(module, LoRALayer):
                module.adapters_disabled = path == 'adapters_disabled'
    expected, got = _train(rounded, autocast=False, steps=2), _train(bf16_base, autocast=False, steps=2)
    for name, value in expected[2].items():
        assert torch.equal(value, got[2][name]), name
    for want, have in zip(expected[0] + expected[1], got[0] + got[1]):
        assert torch.equal(want, have)


@pytest.mark.parametrize('layer', ['wide', 'narrow'])
def test_the_fused_layer_keeps_no_cast_copy_of_a_bf16_base_for_backward(layer, monkeypatch):
    """Saved for backward, parameters aside: the float32 base adds its bf16 copy (``out x in`` bf16 values)."""
    def saved_copies(model: nn.Module) -> int:
        module = getattr(model, layer)
        x = torch.randn(5, module.in_features, requires_grad=True)
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        storages = {}

        def pack(tensor):
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in params:
                storages[storage.data_ptr()] = storage.nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast('cpu', torch.bfloat16):
            module(x)
        return sum(storages.values())

    base = getattr(_Net(), layer)
    difference = saved_copies(_lora_net('fused', monkeypatch)) - saved_copies(
        _lora_net('fused', monkeypatch, base_dtype='bfloat16'))
    assert difference == base.out_features * base.in_features * 2


def test_merging_into_a_bf16_base_gives_the_adapter_output_within_bf16_rounding(monkeypatch):
    """The merged model keeps bf16 bases (run it under autocast, or cast it): its outputs are the adapter's."""
    model = _lora_net('fused', monkeypatch, base_dtype='bfloat16').eval()
    image = torch.randn(2, 3, 6, 6)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        adapted = model(image).float()
        merged = merge_and_unload(copy.deepcopy(model))
        assert merged.wide.weight.dtype == torch.bfloat16
        merged_out = merged(image).float()
        torch.manual_seed(0)
        without_lora = _Net().eval()(image).float()  # the same seeded base
        assert (merged_out - adapted).abs().max() < 0.02 < (without_lora - adapted).abs().max()


def test_base_dtype_errors_name_the_key():
    with pytest.raises(ValueError, match='base_dtype.*compute_dtype'):
        LoRAConfig(targets=['q'], base_dtype='bf16', quantize_bits=4)
    with pytest.raises(ValueError, match='LoRA config base_dtype'):
        LoRAConfig(targets=['q'], base_dtype='int8')
    assert LoRAConfig.build(LoRAConfig(targets=['q'], base_dtype=torch.bfloat16).to_dict()).base_dtype == 'bfloat16'


def test_fsdp_check_refuses_a_model_of_two_float_dtypes(monkeypatch):
    check_fsdp_dtypes(_lora_net('fused', monkeypatch))
    with pytest.raises(ValueError, match=r'conv\.base_layer\.weight is torch\.bfloat16.*base_dtype'):
        check_fsdp_dtypes(_lora_net('fused', monkeypatch, base_dtype='bf16'))
