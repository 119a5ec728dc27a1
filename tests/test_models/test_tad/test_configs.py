"""The AdaTAD THUMOS configs: seed keys verbatim, consistent widths, and the OpenTAD optimizer form accepted."""
from pathlib import Path

import pytest
from mmengine.config import Config
from mmengine.registry import init_default_scope

REPO = Path(__file__).resolve().parents[3]
THUMOS = sorted((REPO / 'configs' / 'adatad' / 'thumos').glob('*.py'))
SEED_OPTIMIZER = dict(type='AdamW', lr=1e-4, weight_decay=0.05, paramwise=True, backbone=dict(
    lr=0, weight_decay=0, custom=[dict(name='adapter', lr=2e-4, weight_decay=0.05),
                                  dict(name='lora', lr=2e-4, weight_decay=0.05)], exclude=[]))


@pytest.mark.parametrize('path', THUMOS, ids=lambda p: p.stem)
def test_thumos_configs_are_consistent(path):
    cfg = Config.fromfile(str(path))
    backbone = cfg.model.backbone
    assert cfg.model.projection.in_channels == backbone.embed_dims
    assert backbone.total_frames == cfg.train_dataloader.dataset.window_size == cfg.model.temporal_size == 768
    assert backbone.adapter_index == list(range(backbone.depth))
    assert cfg.optim_wrapper.constructor == 'LoRAOptimWrapperConstructor'
    if path.stem.endswith(('qlora', 'qlora_8bit')):
        assert backbone.type == 'VisionTransformerQLoRA' and backbone.quantize_bits in (4, 8)
        names = [c['name'] for c in cfg.optim_wrapper.optimizer.backbone.custom]
        assert names == ['adapter', 'lora']


def test_qlora_config_keeps_the_seed_keys_verbatim():
    cfg = Config.fromfile(str(REPO / 'configs/adatad/thumos/e2e_thumos_videomae_s_768x1_160_adapter_qlora.py'))
    backbone = cfg.model.backbone
    assert (backbone.type, backbone.lora_r, backbone.lora_alpha, backbone.lora_dropout, backbone.quantize_bits,
            backbone.use_plain_adapter) == ('VisionTransformerQLoRA', 16, 32, 0.1, 4, False)
    assert cfg.optimizer.to_dict() == SEED_OPTIMIZER
    assert cfg.optim_wrapper.optimizer.to_dict() == SEED_OPTIMIZER


def test_seed_optimizer_form_builds_the_expected_groups():
    """The verbatim OpenTAD optimizer: detector at lr, adapters and LoRA at 2e-4, the rest of the backbone frozen."""
    from opentad_lora.registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS

    init_default_scope('opentad_lora')
    cfg = Config.fromfile(str(REPO / 'configs/adatad/thumos/e2e_thumos_videomae_s_768x1_160_adapter_qlora.py'))
    cfg.model.backbone.update(depth=2, adapter_index=[0, 1], pretrained=None, total_frames=32)  # small to build
    cfg.model.update(temporal_size=None)
    model = MODELS.build(cfg.model)
    wrapper_cfg = cfg.optim_wrapper.to_dict()
    constructor = OPTIM_WRAPPER_CONSTRUCTORS.build(dict(type=wrapper_cfg.pop('constructor'),
                                                        optim_wrapper_cfg=wrapper_cfg))
    groups = constructor(model).optimizer.param_groups
    lr_of = {id(p): group['lr'] for group in groups for p in group['params']}
    for name, param in model.named_parameters():
        if name.startswith('backbone.') and ('.adapter.' in name or '.lora_' in name):
            assert lr_of[id(param)] == 2e-4, name
        elif name.startswith('backbone.'):
            assert id(param) not in lr_of and not param.requires_grad, name
        else:
            assert lr_of[id(param)] == 1e-4, name
