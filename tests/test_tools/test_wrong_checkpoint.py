"""tools/test.py and tools/train.py --resume refuse a checkpoint of another config with one error, before any
evaluation or training step (the quickstart config; the other config changes the LoRA rank and targets)."""
from pathlib import Path
from typing import List

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / 'configs' / 'quickstart' / 'vit_lora_synthetic_cls.py'


def options(data: Path) -> List[str]:
    return ['--cfg-options', f'model.backbone.pretrained={data / "pretrained_vit.pth"}',
            f'train_dataloader.dataset.data_root={data / "train"}', f'val_dataloader.dataset.data_root={data / "val"}',
            f'test_dataloader.dataset.data_root={data / "val"}', 'train_dataloader.batch_size=8',
            'param_scheduler.1.end=1', 'train_cfg.max_epochs=1']


@pytest.fixture(scope='module')
def data(tmp_path_factory, load_tool) -> Path:
    out = tmp_path_factory.mktemp('synthetic_cls')
    load_tool('data/make_synthetic_images').main(['--out', str(out), '--train-per-class', '4',
                                                  '--val-per-class', '2'])
    return out


@pytest.fixture(scope='module')
def trained(data, tmp_path_factory, load_tool) -> Path:
    work_dir = tmp_path_factory.mktemp('trained')
    load_tool('train').main([str(CONFIG), '--work-dir', str(work_dir), *options(data)])
    return work_dir


@pytest.fixture
def other_config(tmp_path) -> Path:
    path = tmp_path / 'other_rank_and_targets.py'
    path.write_text(f"_base_ = ['{CONFIG}']\nmodel = dict(lora=dict(r=4, targets=['qkv', 'fc1', 'fc2']))\n")
    return path


def _assert_names_the_mismatch(message: str, checkpoint: Path, config: Path) -> None:
    assert message.startswith('CheckpointMismatchError: ')
    assert f'Checkpoint {checkpoint} does not fit config {config}' in message
    assert '8 tensors of the file are not trainable tensors and buffers of the model' in message
    assert 'backbone.blocks.0.attn.proj.lora_A.default.weight' in message  # a target the other config lacks
    assert '24 tensors differ in shape' in message and '[file 8x64, model 4x64]' in message  # r=8 vs r=4


def test_test_tool_refuses_a_checkpoint_of_another_config(trained, data, other_config, tmp_path, capsys,
                                                          load_tool):
    test = load_tool('test')
    checkpoint = trained / 'epoch_1.pth'
    out = tmp_path / 'metrics.json'
    with pytest.raises(SystemExit) as info:
        test.main([str(other_config), str(checkpoint), '--work-dir', str(tmp_path), '--out', str(out),
                   *options(data)])
    _assert_names_the_mismatch(str(info.value.code), checkpoint, other_config)
    assert 'accuracy' not in capsys.readouterr().out and not out.exists()  # no number, nothing written
    # The control: its own config evaluates it.
    metrics = test.main([str(CONFIG), str(checkpoint), '--work-dir', str(tmp_path), *options(data)])
    assert 0 <= metrics['accuracy/top1'] <= 100


def test_resume_refuses_a_checkpoint_of_another_config_before_any_step(trained, data, other_config, tmp_path,
                                                                        load_tool):
    checkpoint = trained / 'epoch_1.pth'
    with pytest.raises(SystemExit) as info:
        load_tool('train').main([str(other_config), '--work-dir', str(tmp_path), '--resume', str(checkpoint),
                                 *options(data), 'train_cfg.max_epochs=2'])
    _assert_names_the_mismatch(str(info.value.code), checkpoint, other_config)
    assert not list(tmp_path.glob('*.pth'))  # epoch 2 was not trained
