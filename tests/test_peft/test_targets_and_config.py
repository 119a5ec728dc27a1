"""Target-pattern semantics and config validation: bad configs fail before the model changes."""
import copy

import pytest
import torch
from torch import nn

from opentad_lora.peft import LoRAConfig, LoRALayer, apply_lora
from opentad_lora.peft.targets import closest_names, name_matches


class Block(nn.Module):
    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(dim, 3 * dim)
        self.attn.proj = nn.Linear(dim, dim)
        self.dw = nn.Conv1d(dim, dim, 3, padding=1, groups=dim)


class Net(nn.Module):
    def __init__(self, depth: int = 4) -> None:
        super().__init__()
        self.frame_blocks = nn.ModuleList(Block() for _ in range(depth))
        self.head = nn.Linear(8, 2)


@pytest.mark.parametrize('name, pattern, expected', [
    ('blocks.3.attn.qkv', 'qkv', True),
    ('blocks.3.attn.qkv', 'attn.qkv', True),
    ('blocks.3.attn.qkv', 'kv', False),  # a suffix is a whole dotted component, not a substring
    ('blocks.3.attn.qkv', 're:.*\\.attn\\.qkv', True),
    ('blocks.3.attn.qkv', 're:attn\\.qkv', False),  # regexes must match the whole name
    ('agg.frame_blocks.12.attn.qkv', 'frame_blocks.12-23.attn.qkv', True),
    ('agg.frame_blocks.24.attn.qkv', 'frame_blocks.12-23.attn.qkv', False),
    ('agg.frame_blocks.2.attn.qkv', 'frame_blocks.12-23.attn.qkv', False),
    ('agg.frame_blocks.15.attn.qkv', 'agg.frame_blocks.12-23.*.qkv', True),
    ('agg.frame_blocks.15.a.b.qkv', 'agg.frame_blocks.12-23.*.qkv', True),
    ('agg.frame_blocks.15.qkv', 'agg.frame_blocks.12-23.*.qkv', False),  # '*' is at least one component
])
def test_name_matching(name, pattern, expected):
    assert name_matches(name, pattern) is expected


def test_closest_names_suggests_the_intended_module():
    names = ['blocks.0.attn.qkv', 'blocks.0.attn.proj', 'blocks.0.mlp.fc1', 'head']
    assert closest_names('qvk', names)[0] == 'blocks.0.attn.qkv'


@pytest.mark.parametrize('overrides, message', [
    (dict(r=0), 'rank r'), (dict(r=2.5), 'rank r'), (dict(alpha=0), 'alpha'), (dict(quantize_bits=3), 'quantize_bits'),
    (dict(dropout=1.0), 'dropout'), (dict(targets=[]), 'no targets'), (dict(quant_type='int4'), 'quant_type'),
    (dict(targets=['re:(']), 'regular expression'), (dict(targets=['blocks.5-2.qkv']), 'reversed'),
    (dict(rank_pattern={'qkv': 0}), 'rank_pattern'), (dict(compute_dtype='bf17'), 'compute_dtype'),
    (dict(quant_storage='float33'), 'quant_storage'),
])
def test_invalid_config_values_raise(overrides, message):
    cfg = dict(r=4, alpha=8, targets=['qkv'])
    cfg.update(overrides)
    with pytest.raises(ValueError, match=message):
        LoRAConfig.build(cfg)


def test_unknown_config_key_is_named():
    with pytest.raises(ValueError, match="'rank'"):
        LoRAConfig.build(dict(rank=4, targets=['qkv']))


def test_dict_targets_become_rank_and_alpha_patterns():
    cfg = LoRAConfig.build(dict(type='LoRAConfig', r=4, targets=['qkv', dict(pattern='frame_blocks.2-3.attn.proj',
                                                                          r=2, alpha=3)]))
    assert cfg.targets == ['qkv', 'frame_blocks.2-3.attn.proj']
    assert cfg.rank_pattern == {'frame_blocks.2-3.attn.proj': 2}
    assert cfg.alpha_pattern == {'frame_blocks.2-3.attn.proj': 3}
    assert LoRAConfig.build(cfg.to_dict()) == cfg


def test_layer_ranges_and_per_pattern_ranks_are_applied():
    net = Net()
    report = apply_lora(net, dict(r=4, alpha=8, targets=['qkv', dict(pattern='frame_blocks.2-3.attn.proj', r=2)]))
    assert sorted(report.wrapped) == sorted(
        [f'frame_blocks.{i}.attn.qkv' for i in range(4)] + ['frame_blocks.2.attn.proj', 'frame_blocks.3.attn.proj'])
    assert report.wrapped['frame_blocks.3.attn.proj']['r'] == 2
    assert report.wrapped['frame_blocks.0.attn.qkv']['r'] == 4
    assert net.frame_blocks[3].attn.proj.scaling['default'] == pytest.approx(8 / 2)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and all('.lora_' in n for n in trainable)


@pytest.mark.parametrize('cfg, message', [
    (dict(targets=['qvk']), r"'qvk' matches no module; closest names: \['frame_blocks\.0\.attn\.qkv'"),
    (dict(targets=['norm1']), 'of type LayerNorm'),
    (dict(targets=['dw']), 'grouped convolution'),
    (dict(targets=['qkv'], modules_to_save=['heads']), "modules_to_save 'heads' matches no module"),
])
def test_bad_targets_fail_before_the_model_changes(cfg, message):
    net = Net()
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(ValueError, match=message):
        apply_lora(net, dict(r=4, **cfg))
    assert not any(isinstance(m, LoRALayer) for m in net.modules())
    assert all(p.requires_grad for p in net.parameters())
    after = net.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_exclude_and_modules_to_save():
    net = Net()
    report = apply_lora(net, dict(r=2, targets=['qkv'], exclude=['frame_blocks.0.attn.qkv'], modules_to_save=['head']))
    assert 'frame_blocks.0.attn.qkv' not in report.wrapped and len(report.wrapped) == 3
    assert all(p.requires_grad for p in net.head.parameters())
    assert report.modules_to_save == ['head']
    lora_params = 3 * (2 * 8 + 24 * 2)
    assert report.trainable == lora_params + 8 * 2 + 2
