"""LoRA strategies A/B/C of the depth configs train exactly the intended modules; VGGT-1B has the upstream shape."""
import re
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from torch import nn

import opentad_lora.models  # noqa: F401
from opentad_lora.peft import iter_lora_layers
from opentad_lora.registry import MODELS

CONFIGS = Path(__file__).resolve().parents[3] / 'configs' / 'depth'


def _model_cfg(name: str, strategy: str, lora: bool = True) -> dict:
    cfg = Config.fromfile(str(CONFIGS / f'{name}_strategy_{strategy}.py')).model.to_dict()
    cfg['pretrained'] = None
    if not lora:
        cfg['lora'] = None
    return cfg


def _expected_modules(model: nn.Module, strategy: str) -> set:
    """The intended modules, derived from module types (not from the configs' patterns).

    A: every nn.Conv2d of the depth head (its ConvTranspose2d are not Conv2d and cannot be wrapped).
    B: A + every nn.Linear of frame/global blocks 12-23. C: A + every nn.Linear of all frame/global blocks and of the
    camera head. Nothing in the patch embedding.
    """
    expected = set()
    for name, module in model.named_modules():
        block = re.match(r'aggregator\.(frame|global)_blocks\.(\d+)\.', name)
        if name.startswith('depth_head.') and type(module) is nn.Conv2d:
            expected.add(name)
        elif block and isinstance(module, nn.Linear) and (strategy == 'c' or
                                                          (strategy == 'b' and int(block.group(2)) >= 12)):
            expected.add(name)
        elif strategy == 'c' and name.startswith('camera_head.') and isinstance(module, nn.Linear):
            expected.add(name)
    return expected


@pytest.mark.parametrize('strategy', ['a', 'b', 'c'])
def test_strategy_trains_exactly_the_intended_modules(strategy):
    base = MODELS.build(_model_cfg('vggt_tiny_lora_synthetic', strategy, lora=False))
    expected = _expected_modules(base, strategy)
    model = MODELS.build(_model_cfg('vggt_tiny_lora_synthetic', strategy))
    wrapped = {name for name, _ in iter_lora_layers(model)}
    assert wrapped == expected
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f'{m}.lora_{ab}.default.weight' for m in expected for ab in 'AB'}
    assert all(layer.r['default'] == 16 and layer.scaling['default'] == 2.0 for _, layer in iter_lora_layers(model))
    assert 'depth_head.resize_layers.0' not in wrapped and 'depth_head.resize_layers.3' in wrapped
    assert not any(name.startswith('aggregator.patch_embed') for name in trainable)


def test_full_size_configs_have_vggt_1b_shapes_and_lora_sizes():
    """Built on the meta device: the counts of models.md (worked out from the upstream layer shapes)."""
    with torch.device('meta'):
        base = MODELS.build(_model_cfg('vggt_dpt_lora_eth3d', 'a', lora=False))
        counts = {name: sum(p.numel() for p in getattr(base, name).parameters())
                  for name in ('aggregator', 'camera_head', 'depth_head')}
        assert sum(p.numel() for p in base.aggregator.patch_embed.parameters()) == 304_372_736
        assert sum(p.numel() for p in base.aggregator.frame_blocks.parameters()) * 2 == 604_729_344
        assert counts == dict(aggregator=304_372_736 + 604_729_344 + 5 * 2 * 1024, camera_head=216_174_610,
                              depth_head=32_654_562)
        strategy_b = MODELS.build(_model_cfg('vggt_dpt_lora_eth3d', 'b'))
    aggregator_lora = sum(p.numel() for n, p in strategy_b.named_parameters() if p.requires_grad
                          and n.startswith('aggregator.'))
    assert aggregator_lora == 12_582_912 // 2  # r=16 on qkv/proj/fc1/fc2 of half of the 48 blocks
