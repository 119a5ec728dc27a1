"""configs/_base_: runtime defaults, the LoRA runtime, and the TensorBoard backend that degrades without tensorboard."""
import sys
from pathlib import Path

import pytest
from mmengine.config import Config

from opentad_lora.registry import VISBACKENDS
from opentad_lora.visualization.vis_backend import OptionalTensorboardVisBackend

CONFIGS = Path(__file__).resolve().parents[2] / 'configs'


def test_default_runtime_values():
    cfg = Config.fromfile(str(CONFIGS / '_base_' / 'default_runtime.py'))
    assert cfg.default_scope == 'opentad_lora'
    assert cfg.default_hooks.checkpoint == dict(type='CheckpointHook', interval=1, max_keep_ckpts=3, save_last=True)
    assert set(cfg.default_hooks) == {'runtime_info', 'timer', 'logger', 'param_scheduler', 'checkpoint',
                                      'sampler_seed', 'epoch_seed'}
    assert cfg.env_cfg.cudnn_benchmark is False and cfg.env_cfg.dist_cfg.backend == 'nccl'
    assert [b['type'] for b in cfg.visualizer.vis_backends] == ['LocalVisBackend', 'OptionalTensorboardVisBackend']
    assert 'custom_hooks' not in cfg  # the LoRA hook comes from lora_runtime.py only


def test_quickstart_composes_the_bases():
    cfg = Config.fromfile(str(CONFIGS / 'quickstart' / 'vit_lora_synthetic_cls.py'))
    assert [h['type'] for h in cfg.custom_hooks] == ['LoRACheckpointHook']
    assert cfg.optim_wrapper.constructor == 'LoRAOptimWrapperConstructor'
    assert cfg.model.lora.r == 8 and cfg.model.lora.modules_to_save == ['head']
    assert cfg.model.backbone.embed_dim == 64 and cfg.model.backbone.arch is None
    assert cfg.train_dataloader.dataset.data_root == 'data/synthetic_cls/train'


def test_tensorboard_backend_writes_events_when_installed(tmp_path):
    pytest.importorskip('tensorboard')
    backend = VISBACKENDS.build(dict(type='OptionalTensorboardVisBackend', save_dir=str(tmp_path)))
    backend.add_scalars({'loss': 1.5}, step=1)
    backend.close()
    assert list(tmp_path.glob('events.out.tfevents.*'))


def test_tensorboard_backend_is_a_noop_without_tensorboard(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'torch.utils.tensorboard', None)  # makes the import fail
    backend = OptionalTensorboardVisBackend(save_dir=str(tmp_path / 'tb'))
    with pytest.warns(UserWarning, match='pip install tensorboard'):
        backend.add_scalars({'loss': 1.5}, step=1)
    backend.add_scalar('acc', 0.5, step=2)
    backend.close()
    assert not list((tmp_path / 'tb').glob('events.out.tfevents.*'))
