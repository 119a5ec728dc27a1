"""The logged `depth/val_loss` is this validation's value, not MMEngine's mean over the last validations."""
from pathlib import Path
from types import SimpleNamespace

import pytest
from mmengine.config import Config
from mmengine.logging import MessageHub
from mmengine.runner import LogProcessor

CONFIG = Path(__file__).resolve().parents[3] / 'configs' / 'depth' / 'vggt_tiny_lora_synthetic_strategy_c.py'


def test_logged_val_loss_is_the_current_validation_not_a_running_mean():
    cfg = Config.fromfile(str(CONFIG)).log_processor.to_dict()
    assert cfg.pop('type') == 'LogProcessor'
    processor = LogProcessor(**cfg)
    hub = MessageHub.get_instance('test_depth_val_logging')
    runner = SimpleNamespace(message_hub=hub, epoch=10, _train_loop=object(),
                             val_loop=SimpleNamespace(dataloader=[None, None]))
    for val_loss, abs_rel in ((4.0, 0.3), (2.5, 0.2)):  # two validations, as at epochs 5 and 10
        hub.update_scalars({'val/depth/val_loss': val_loss, 'val/depth/abs_rel': abs_rel})
    tag, log_str = processor.get_log_after_epoch(runner, 2, 'val')
    assert tag['depth/val_loss'] == pytest.approx(2.5)  # without the config's custom_cfg: (4.0 + 2.5) / 2
    assert tag['depth/abs_rel'] == pytest.approx(0.2)
    assert 'depth/val_loss: 2.5000' in log_str
