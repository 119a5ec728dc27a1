"""Our LoRA maths and files against HF PEFT, the reference implementation (a test-only dependency)."""
import copy
import json

import pytest
import torch
from torch import nn

from opentad_lora.peft import (apply_lora, disable_adapters, load_adapter, merge_and_unload, merge_lora,
                               save_adapter, set_adapter, unmerge_lora)

peft = pytest.importorskip('peft')


class ConvNet(nn.Module):
    """A small model with every layer kind LoRA wraps."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.temporal = nn.Conv1d(6, 6, 3, padding=1)
        self.fc1 = nn.Linear(6, 16)
        self.fc2 = nn.Linear(16, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x).flatten(2)  # (B, 6, HW)
        x = self.temporal(x).transpose(1, 2)  # (B, HW, 6)
        return self.head(self.fc2(torch.relu(self.fc1(x)))).mean(1)


TARGETS = ['conv', 'temporal', 'fc1', 'fc2']


def _peft_model(model: nn.Module, **kwargs) -> nn.Module:
    cfg = peft.LoraConfig(target_modules=TARGETS, **kwargs)
    return peft.inject_adapter_in_model(cfg, model)


def _randomise_b(model: nn.Module) -> None:
    """B starts at zero; give it values so the LoRA path matters."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if 'lora_B' in name:
                param.normal_(0, 0.5)


def _lora_params(model: nn.Module) -> dict:
    return {n.replace('.default', ''): p for n, p in model.named_parameters() if 'lora_' in n}


@pytest.mark.parametrize('use_rslora', [False, True])
def test_same_seed_same_init_same_outputs_and_grads(use_rslora):
    base = ConvNet()
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    torch.manual_seed(1)
    apply_lora(ours, dict(r=4, alpha=6, targets=TARGETS, use_rslora=use_rslora))
    torch.manual_seed(1)
    _peft_model(theirs, r=4, lora_alpha=6, use_rslora=use_rslora)
    ours_p, theirs_p = _lora_params(ours), _lora_params(theirs)
    assert ours_p.keys() == theirs_p.keys()
    for key in ours_p:  # identical initialisation: kaiming-uniform A, zero B
        assert torch.equal(ours_p[key], theirs_p[key]), key
    torch.manual_seed(2)
    _randomise_b(ours)
    torch.manual_seed(2)
    _randomise_b(theirs)
    x = torch.randn(2, 3, 5, 5)
    out_ours, out_theirs = ours(x), theirs(x)
    torch.testing.assert_close(out_ours, out_theirs, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out_ours, base(x), atol=1e-4)
    out_ours.square().sum().backward()
    out_theirs.square().sum().backward()
    for key in ours_p:
        torch.testing.assert_close(ours_p[key].grad, theirs_p[key].grad, rtol=1e-4, atol=1e-6)


def test_dropout_only_on_lora_path_matches_peft():
    base = ConvNet()
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    torch.manual_seed(1)
    apply_lora(ours, dict(r=4, alpha=8, dropout=0.5, targets=TARGETS))
    torch.manual_seed(1)
    _peft_model(theirs, r=4, lora_alpha=8, lora_dropout=0.5)
    for model in (ours, theirs):
        torch.manual_seed(2)
        _randomise_b(model)
        model.train()
    x = torch.randn(2, 3, 5, 5)
    torch.manual_seed(3)
    out_ours = ours(x)
    torch.manual_seed(3)
    out_theirs = theirs(x)
    torch.testing.assert_close(out_ours, out_theirs, rtol=1e-5, atol=1e-6)
    ours.eval()
    with disable_adapters(ours):  # the base path never sees dropout
        torch.testing.assert_close(ours(x), base(x))


def test_merge_matches_peft_and_unmerge_restores():
    base = ConvNet()
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    torch.manual_seed(1)
    apply_lora(ours, dict(r=4, alpha=8, targets=TARGETS))
    torch.manual_seed(1)
    _peft_model(theirs, r=4, lora_alpha=8)
    for model in (ours, theirs):
        torch.manual_seed(2)
        _randomise_b(model)
    x = torch.randn(2, 3, 5, 5)
    expected = ours(x)
    merge_lora(ours)
    for module in theirs.modules():
        if isinstance(module, peft.tuners.lora.LoraLayer):
            module.merge()
    for name in TARGETS:
        torch.testing.assert_close(getattr(ours, name).base_layer.weight, getattr(theirs, name).base_layer.weight,
                                   rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours(x), expected, rtol=1e-5, atol=1e-5)
    unmerge_lora(ours)
    for name in TARGETS:
        torch.testing.assert_close(getattr(ours, name).base_layer.weight, getattr(base, name).weight,
                                   rtol=0, atol=1e-6)
    plain = merge_and_unload(copy.deepcopy(ours))
    assert not any('lora' in n for n, _ in plain.named_parameters())
    torch.testing.assert_close(plain(x), expected, rtol=1e-5, atol=1e-5)


def test_our_adapter_files_load_in_peft_and_back(tmp_path):
    base = ConvNet()
    ours = copy.deepcopy(base)
    apply_lora(ours, dict(r=4, alpha=8, targets=TARGETS + [dict(pattern='fc2', r=2, alpha=3)],
                          modules_to_save=['head']))
    _randomise_b(ours)
    with torch.no_grad():
        ours.head.weight.add_(1.0)
    x = torch.randn(2, 3, 5, 5)
    expected = ours(x)
    save_adapter(ours, tmp_path / 'ours', )
    config = json.loads((tmp_path / 'ours' / 'adapter_config.json').read_text())
    assert config['peft_type'] == 'LORA' and config['r'] == 4 and config['rank_pattern'] == {'fc2': 2}

    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / 'ours'))
    torch.testing.assert_close(theirs(x), expected, rtol=1e-5, atol=1e-6)

    # PEFT saves, we load into a fresh base model.
    theirs.save_pretrained(str(tmp_path / 'theirs'))
    reloaded = load_adapter(copy.deepcopy(base), tmp_path / 'theirs')
    torch.testing.assert_close(reloaded(x), expected, rtol=1e-5, atol=1e-6)
    assert reloaded.fc2.r['default'] == 2


def test_several_named_adapters_switch_and_disable():
    model = ConvNet()
    base = copy.deepcopy(model)
    apply_lora(model, dict(r=2, targets=TARGETS))
    apply_lora(model, dict(r=3, targets=['fc1', 'fc2']), adapter_name='other')
    _randomise_b(model)
    x = torch.randn(1, 3, 5, 5)
    out_default = model(x)
    set_adapter(model, 'other')
    out_other = model(x)
    assert not torch.allclose(out_default, out_other)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all('.other.' in n for n in trainable)
    set_adapter(model, 'default')
    torch.testing.assert_close(model(x), out_default)
    with disable_adapters(model):
        torch.testing.assert_close(model(x), base(x))
    with pytest.raises(KeyError, match='missing'):
        set_adapter(model, 'missing')


def test_adding_an_adapter_keeps_the_active_one():
    model = ConvNet()
    apply_lora(model, dict(r=2, targets=['fc1']))
    _randomise_b(model)
    x = torch.randn(1, 3, 5, 5)
    expected = model(x)
    apply_lora(model, dict(r=2, targets=['fc1', 'fc2']), adapter_name='other')
    with torch.no_grad():  # would change the output if 'other' were active anywhere
        for name in ('fc1', 'fc2'):
            getattr(model, name).lora_B['other'].weight.normal_()
    torch.testing.assert_close(model(x), expected)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {'fc1.lora_A.default.weight',
                                                                          'fc1.lora_B.default.weight'}
