"""LoRAOptimWrapperConstructor: OpenTAD's optimizer dict, MMEngine's paramwise_cfg, several optimizers."""
import pytest
import torch
from mmengine.optim import AmpOptimWrapper, OptimWrapper, OptimWrapperDict, build_optim_wrapper
from mmengine.registry import init_default_scope
from torch import nn

import opentad_lora.engine.optim_constructor as optim_constructor
from opentad_lora.engine import LoRAOptimWrapperConstructor, format_param_groups
from opentad_lora.peft import apply_lora

SEED_003 = dict(type='AdamW', lr=1e-4, weight_decay=0.05, paramwise=True,
                backbone=dict(lr=0, weight_decay=0, custom=[dict(name='adapter', lr=2e-4, weight_decay=0.05),
                                                            dict(name='lora', lr=2e-4, weight_decay=0.05)],
                              exclude=[]))


class Adapter(nn.Module):

    def __init__(self) -> None:
        super().__init__()
        self.down, self.up = nn.Linear(8, 2), nn.Linear(2, 8)
        self.gamma = nn.Parameter(torch.ones(1))


class Block(nn.Module):

    def __init__(self) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(8)
        self.attn = nn.Module()
        self.attn.qkv, self.attn.proj = nn.Linear(8, 24), nn.Linear(8, 8)
        self.adapter = Adapter()


class Detector(nn.Module):
    """``backbone.blocks.N.{attn.qkv,adapter}`` + ``neck`` + ``head``, LoRA on the backbone, adapters trainable."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))
        self.backbone.blocks = nn.ModuleList([Block(), Block()])
        self.neck = nn.Module()
        self.neck.conv, self.neck.norm = nn.Conv1d(8, 8, 3), nn.GroupNorm(2, 8)
        self.head = nn.Module()
        self.head.fc = nn.Linear(8, 4)
        self.head.scale = nn.Parameter(torch.ones(()))
        apply_lora(self.backbone, dict(r=2, alpha=4, targets=['qkv', 'proj']))
        for block in self.backbone.blocks:
            block.adapter.requires_grad_(True)
        self.backbone.pos_embed.requires_grad_(True)  # trainable, but the backbone's lr=0 will freeze it


def _groups(optimizer: torch.optim.Optimizer, model: nn.Module) -> list:
    """``[(lr, weight_decay, sorted param names)]`` per param group."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [(g['lr'], g['weight_decay'], sorted(names[id(p)] for p in g['params'])) for g in optimizer.param_groups]


def _names(model: nn.Module, *patterns: str, bias_like: bool) -> list:
    """Trainable parameter names containing any pattern; ``bias_like`` selects 1-D (bias/norm/scalar) ones."""
    return sorted(n for n, p in model.named_parameters()
                  if p.requires_grad and any(s in n for s in patterns) and (p.ndim <= 1) == bias_like)


def test_opentad_seed_003_optimizer_dict(monkeypatch):
    logs = []
    monkeypatch.setattr(optim_constructor, 'print_log', lambda msg, **kw: logs.append(msg))
    model = Detector()
    wrapper = LoRAOptimWrapperConstructor(dict(optimizer=SEED_003))(model)
    assert type(wrapper) is OptimWrapper and type(wrapper.optimizer) is torch.optim.AdamW
    lora_and_adapters = sorted(_names(model, 'adapter', 'lora_', bias_like=False)
                               + _names(model, 'adapter', bias_like=True))
    assert len(lora_and_adapters) == 2 * (5 + 4)  # per block: adapter down/up weight+bias, gamma; 2x LoRA A/B
    assert _groups(wrapper.optimizer, model) == [
        (2e-4, 0.05, lora_and_adapters),  # explicit weight_decay: adapter biases decay too, as in OpenTAD
        (1e-4, 0.05, ['head.fc.weight', 'neck.conv.weight']),
        (1e-4, 0.0, ['head.fc.bias', 'head.scale', 'neck.conv.bias', 'neck.norm.bias', 'neck.norm.weight']),
    ]
    assert wrapper.optimizer.param_groups[0]['name'] == 'backbone.custom[lora] + backbone.custom[adapter]'
    assert not model.backbone.pos_embed.requires_grad  # lr=0: frozen, not handed to the optimizer
    assert 'betas' in wrapper.optimizer.defaults and 'backbone' not in wrapper.optimizer.defaults
    tables = [msg for msg in logs if 'param groups' in msg]
    assert len(tables) == 1 and len(logs) == 2  # one table + one line about the lr=0 freeze, no per-tensor lines
    assert 'backbone.custom[lora] + backbone.custom[adapter]' in tables[0]


def test_opentad_exclude_and_custom_precedence():
    model = Detector()
    optimizer = dict(type='SGD', lr=0.1, weight_decay=0.01, backbone=dict(
        lr=0.01, custom=[dict(name='lora_B', lr=0.5)], exclude=['adapter', 'lora_B']))
    wrapper = LoRAOptimWrapperConstructor(dict(optimizer=optimizer))(model)
    groups = _groups(wrapper.optimizer, model)
    lora_b = _names(model, 'lora_B', bias_like=False)
    assert (0.5, 0.01, lora_b) in groups  # custom wins over exclude (OpenTAD checks custom first)
    assert (0.01, 0.01, sorted(['backbone.pos_embed'] + _names(model, 'lora_A', bias_like=False))) in groups
    assert not any(p.requires_grad for b in model.backbone.blocks for p in b.adapter.parameters())


def test_mmengine_custom_keys_and_default_no_decay():
    model = Detector()
    wrapper = LoRAOptimWrapperConstructor(
        dict(optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.1)),
        dict(custom_keys={'head': dict(lr_mult=10, decay_mult=0.5), 'lora_B': dict(lr_mult=2)}))(model)
    decay = sorted(['backbone.pos_embed', 'neck.conv.weight'] + _names(model, 'lora_A', bias_like=False)
                   + _names(model, 'adapter', bias_like=False))
    assert _groups(wrapper.optimizer, model) == [
        (1e-3, 0.1, decay),
        (2e-3, 0.1, _names(model, 'lora_B', bias_like=False)),
        (1e-3, 0.0, sorted(_names(model, 'adapter', bias_like=True) + ['neck.conv.bias', 'neck.norm.bias',
                                                                         'neck.norm.weight'])),
        (1e-2, 0.05, ['head.fc.bias', 'head.fc.weight', 'head.scale']),  # decay_mult is explicit: biases too
    ]
    assert wrapper.optimizer.param_groups[1]['name'] == 'custom_keys[lora_B]'
    assert 'lr_mult' not in wrapper.optimizer.param_groups[1]


@pytest.mark.parametrize('paramwise_cfg, expected', [
    (dict(decay_norm_and_bias=True), 'one group'),
    (dict(norm_decay_mult=0.5, bias_lr_mult=2.0), 'mmengine mults'),
])
def test_paramwise_norm_and_bias_options(paramwise_cfg, expected):
    model = Detector()
    model.backbone.requires_grad_(False)
    wrapper = LoRAOptimWrapperConstructor(
        dict(optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.1)), paramwise_cfg)(model)
    groups = _groups(wrapper.optimizer, model)
    if expected == 'one group':
        assert groups == [(1e-3, 0.1, sorted(n for n, p in model.named_parameters() if p.requires_grad))]
    else:
        assert groups == [
            (1e-3, 0.1, ['head.fc.weight', 'neck.conv.weight']),
            (2e-3, 0.0, ['head.fc.bias', 'neck.conv.bias']),  # bias_lr_mult, not a norm, default no decay
            (1e-3, 0.05, ['neck.norm.bias', 'neck.norm.weight']),  # norm_decay_mult is explicit
            (1e-3, 0.0, ['head.scale']),
        ]


@pytest.mark.filterwarnings('ignore:torch.cuda.amp.GradScaler is enabled')
def test_registered_and_built_through_mmengine_with_amp(monkeypatch):
    import mmengine.optim.optimizer.amp_optimizer_wrapper as amp
    monkeypatch.setattr(amp, 'is_cuda_available', lambda: True)  # AmpOptimWrapper asserts a GPU at construction
    init_default_scope('opentad_lora')
    model = Detector()
    wrapper = build_optim_wrapper(model, dict(
        type='AmpOptimWrapper', dtype='bfloat16', constructor='LoRAOptimWrapperConstructor', optimizer=SEED_003,
        clip_grad=dict(max_norm=1.0)))
    assert isinstance(wrapper, AmpOptimWrapper) and wrapper.cast_dtype is torch.bfloat16
    assert [g['lr'] for g in wrapper.optimizer.param_groups] == [2e-4, 1e-4, 1e-4]


class GAN(nn.Module):
    """HaMeR-like: LoRA backbone + head form the generator; the discriminator is a submodule."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.head = nn.Linear(4, 2)
        self.discriminator = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
        apply_lora(self.backbone, dict(r=2, targets=['0']))
        apply_lora(self.discriminator, dict(r=1, targets=['0'], modules_to_save=['1']))


def test_several_optimizers_split_the_model():
    init_default_scope('opentad_lora')
    model = GAN()
    wrapper = build_optim_wrapper(model, dict(
        constructor='LoRAOptimWrapperConstructor',
        generator=dict(optimizer=dict(type='AdamW', lr=1e-4, weight_decay=1e-4)),
        discriminator=dict(optimizer=dict(type='AdamW', lr=1e-5, weight_decay=1e-4),
                           paramwise_cfg=dict(decay_norm_and_bias=True))))
    assert isinstance(wrapper, OptimWrapperDict) and set(wrapper.keys()) == {'generator', 'discriminator'}
    gen = {n for _, _, names in _groups(wrapper['generator'].optimizer, model) for n in names}
    disc = _groups(wrapper['discriminator'].optimizer, model)
    assert gen == {n for n, p in model.named_parameters() if p.requires_grad and not n.startswith('discriminator')}
    assert disc == [(1e-5, 1e-4, sorted(n for n, p in model.named_parameters()
                                        if p.requires_grad and n.startswith('discriminator')))]


def test_several_optimizers_with_explicit_modules_and_errors(monkeypatch):
    model = GAN()
    build = LoRAOptimWrapperConstructor(dict(
        fast=dict(optimizer=dict(type='SGD', lr=0.1), modules=['head', 'discriminator']),
        slow=dict(optimizer=dict(type='SGD', lr=0.01))))
    wrapper = build(model)
    assert {n for *_, names in _groups(wrapper['slow'].optimizer, model) for n in names} == {
        n for n, p in model.named_parameters() if p.requires_grad and n.startswith('backbone')}
    logs = []
    monkeypatch.setattr(optim_constructor, 'print_log', lambda msg, **kw: logs.append(msg))
    LoRAOptimWrapperConstructor(dict(gen=dict(optimizer=dict(type='SGD', lr=0.1), modules=['backbone']),
                                     discriminator=dict(optimizer=dict(type='SGD', lr=0.1))))(model)
    assert any(msg.startswith('2 trainable tensors belong to no optimizer (head.weight, head.bias)') for msg in logs)
    with pytest.raises(ValueError, match='only one optimizer may take the remaining'):
        LoRAOptimWrapperConstructor(dict(a=dict(optimizer=dict(type='SGD', lr=0.1)),
                                         b=dict(optimizer=dict(type='SGD', lr=0.1))))(model)


def test_bad_configs_raise_clear_errors():
    with pytest.raises(ValueError, match='optimizer.backbone has unknown keys'):
        LoRAOptimWrapperConstructor(dict(optimizer=dict(type='AdamW', lr=1e-3, backbone=dict(lr_mult=0.1))))
    with pytest.raises(ValueError, match='paramwise_cfg has unsupported keys'):
        LoRAOptimWrapperConstructor(dict(optimizer=dict(type='AdamW', lr=1e-3)), dict(bypass_duplicate=True))
    model = Detector()
    model.requires_grad_(False)
    with pytest.raises(ValueError, match='No trainable parameters'):
        LoRAOptimWrapperConstructor(dict(optimizer=dict(type='AdamW', lr=1e-3)))(model)


def test_format_param_groups_counts():
    model = Detector()
    optimizer = LoRAOptimWrapperConstructor(dict(optimizer=SEED_003))(model).optimizer
    table = format_param_groups(optimizer, model).splitlines()
    assert table[1].split() == ['group', '#tensors', '#params', 'lr', 'weight_decay']
    first = table[2].split()
    lora_adapter = [p for n, p in model.named_parameters() if 'lora_' in n or 'adapter' in n]
    assert first[-4:] == [str(len(lora_adapter)), f'{sum(p.numel() for p in lora_adapter):,}', '0.0002', '0.05']


class HandModel(nn.Module):
    """HaMeR's part names: LoRA backbone and mano_head (the generator) and a LoRA discriminator."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 4))
        self.mano_head = nn.Sequential(nn.Linear(4, 3))
        self.discriminator = nn.Sequential(nn.Linear(3, 1))
        for part in (self.backbone, self.mano_head, self.discriminator):
            apply_lora(part, dict(r=2, targets=['0']))


def test_hamer_config_lr_override_reaches_every_trainable_tensor():
    """The seed's TRAIN.LR=5e-5 as --cfg-options on the shipped HaMeR schedule: every group takes the new lr."""
    from pathlib import Path

    from mmengine.config import Config
    init_default_scope('opentad_lora')
    cfg = Config.fromfile(str(Path(__file__).resolve().parents[2] / 'configs/hamer/_base_/adversarial_schedule.py'))
    cfg.merge_from_dict({'optim_wrapper.generator.optimizer.lr': 5e-5,
                         'optim_wrapper.discriminator.optimizer.lr': 5e-5})
    model = HandModel()
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    lrs = {(name, g['lr']) for name in ('generator', 'discriminator') for g in wrapper[name].optimizer.param_groups}
    assert lrs == {('generator', 5e-5), ('discriminator', 5e-5)}
    optimised = {id(p) for name in ('generator', 'discriminator') for g in wrapper[name].optimizer.param_groups
                 for p in g['params']}
    assert optimised == {id(p) for p in model.parameters() if p.requires_grad} and len(optimised) == 6


def test_an_optimizer_lr_that_reaches_no_parameter_is_refused_naming_the_keys():
    """Sub-dicts with their own lr used to swallow an override of the optimizer lr silently."""
    model = HandModel()
    shadowed = dict(type='AdamW', lr=5e-5, backbone=dict(lr=1e-4), mano_head=dict(lr=1e-4))
    build = LoRAOptimWrapperConstructor(dict(generator=dict(optimizer=shadowed, modules=['backbone', 'mano_head']),
                                             discriminator=dict(optimizer=dict(type='AdamW', lr=1e-4))))
    with pytest.raises(ValueError, match=r'optim_wrapper\.generator\.optimizer\.lr=5e-05 is the lr of no trainable '
                                         r'parameter: every one takes its lr from optim_wrapper\.generator\.optimizer'
                                         r'\.backbone\.lr, optim_wrapper\.generator\.optimizer\.mano_head\.lr\.'):
        build(model)
    custom = dict(type='SGD', lr=0.1, backbone=dict(lr=0, custom=[dict(name='lora_', lr=0.2)]))
    with pytest.raises(ValueError, match=r"from optim_wrapper\.optimizer\.backbone\.custom\[0\]\.lr, "
                                         r"optim_wrapper\.paramwise_cfg\.custom_keys\['discriminator'\]\.lr, "
                                         r"optim_wrapper\.paramwise_cfg\.custom_keys\['mano_head'\]\.lr\."):
        LoRAOptimWrapperConstructor(dict(optimizer=custom), dict(custom_keys={'mano_head': dict(lr=0.3),
                                                                              'discriminator': dict(lr=0.3)}))(
            HandModel())
    # One part following the optimizer lr is enough; a prefix rule without lr follows it too.
    wrapper = LoRAOptimWrapperConstructor(dict(optimizer=dict(type='SGD', lr=0.1, backbone=dict(lr=0.01),
                                                              mano_head=dict(weight_decay=0.0))))(HandModel())
    assert sorted(g['lr'] for g in wrapper.optimizer.param_groups) == [0.01, 0.1, 0.1]  # mano_head: own wd
