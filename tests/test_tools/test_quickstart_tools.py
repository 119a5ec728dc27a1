"""Foundation acceptance: the quickstart config through the real command-line tools, end to end on CPU.

One small data set and one 2-epoch run are shared by the module. Training runs as a user runs it (``python
tools/train.py`` / ``torchrun`` subprocesses from the repository root, package not installed): accuracy above
chance and adapter files; 1 epoch + ``--resume`` equals 2 epochs bit for bit; ``torchrun --nproc-per-node 2`` is
one job of world size 2; the experimental FSDP config trains (LoRA and QLoRA) and resumes bit for bit too. The
other tools run in-process through their ``main(argv)``: tools/test.py reproduces the validation accuracy;
merge_lora's merged state dict (loaded into the model without LoRA) gives the LoRA model's outputs; print_lora_info
prints the table.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

from opentad_lora.engine.checkpoint import load_checkpoint_file
from opentad_lora.peft import load_adapter
from opentad_lora.registry import MODELS

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / 'configs' / 'quickstart' / 'vit_lora_synthetic_cls.py'
FSDP_CONFIG = ROOT / 'configs' / 'quickstart' / 'vit_lora_synthetic_cls_fsdp.py'
NUM_CLASSES = 4
TRAIN_PER_CLASS = 6  # 24 images, batch 8: 3 iterations per epoch (2 per rank with two processes)


def run_tool(args: List[str], timeout: int = 240) -> str:
    """Run a command from the repository root (not installed: the tools add the root to sys.path); return its log.

    With ``PYTHONFAULTHANDLER`` a process killed by a signal prints every thread's Python stack into the log.
    """
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore', PYTHONFAULTHANDLER='1')
    env.pop('PYTHONPATH', None)
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f'{" ".join(args)} failed:\n{log[-4000:]}'
    return log


def data_options(data: Path) -> List[str]:
    return [f'model.backbone.pretrained={data / "pretrained_vit.pth"}',
            f'train_dataloader.dataset.data_root={data / "train"}',
            f'val_dataloader.dataset.data_root={data / "val"}',
            f'test_dataloader.dataset.data_root={data / "val"}',
            'train_dataloader.batch_size=8', 'param_scheduler.1.end=2', 'default_hooks.logger.interval=1']


def train(work_dir: Path, data: Path, epochs: int, *extra: str) -> str:
    return run_tool([sys.executable, 'tools/train.py', str(CONFIG), '--work-dir', str(work_dir), *extra,
                     '--cfg-options', *data_options(data), f'train_cfg.max_epochs={epochs}'])


def val_accuracies(work_dir: Path) -> List[float]:
    """accuracy/top1 of every validation, from the run's scalars.json."""
    lines = [json.loads(line) for path in work_dir.glob('*/vis_data/scalars.json') for line in path.open()]
    return [line['accuracy/top1'] for line in lines if 'accuracy/top1' in line]


@pytest.fixture(scope='module')
def data(tmp_path_factory, load_tool) -> Path:
    out = tmp_path_factory.mktemp('synthetic_cls')
    load_tool('data/make_synthetic_images').main(
        ['--out', str(out), '--num-classes', str(NUM_CLASSES), '--train-per-class', str(TRAIN_PER_CLASS),
         '--val-per-class', '4', '--noise-std', '60'])
    return out


@pytest.fixture(scope='module')
def straight_run(data, tmp_path_factory) -> Path:
    work_dir = tmp_path_factory.mktemp('straight')
    train(work_dir, data, 2)
    return work_dir


def test_train_reaches_above_chance_and_writes_adapter(straight_run):
    accuracies = val_accuracies(straight_run)
    assert len(accuracies) == 2
    assert accuracies[-1] >= 2 * 100.0 / NUM_CLASSES, accuracies
    config = json.loads((straight_run / 'final_lora_weights' / 'adapter_config.json').read_text())
    assert config['peft_type'] == 'LORA' and config['r'] == 8
    assert len(config['target_modules']) == 4 * 4 and config['modules_to_save'] == ['head']
    assert (straight_run / 'final_lora_weights' / 'adapter_model.safetensors').is_file()
    assert (straight_run / 'last_checkpoint').read_text().strip().endswith('epoch_2.pth')


def test_test_tool_reproduces_validation_accuracy(straight_run, data, tmp_path, capsys, load_tool):
    out = tmp_path / 'metrics.json'
    metrics = load_tool('test').main([str(CONFIG), str(straight_run / 'epoch_2.pth'), '--work-dir', str(tmp_path),
                                      '--out', str(out), '--cfg-options', *data_options(data)])
    assert metrics['accuracy/top1'] == val_accuracies(straight_run)[-1]
    assert json.loads(out.read_text()) == metrics
    assert f'accuracy/top1: {metrics["accuracy/top1"]:.4f}' in capsys.readouterr().out


def test_bf16_bases_train_and_the_test_tool_rebuilds_them(data, tmp_path, load_tool):
    """``lora.base_dtype`` from the command line: the run trains (float32 on CPU: the bases compute in the input's
    dtype) and tools/test.py, building the model from the same options, reproduces its validation accuracy."""
    option = 'model.lora.base_dtype=bfloat16'
    run_tool([sys.executable, 'tools/train.py', str(CONFIG), '--work-dir', str(tmp_path), '--cfg-options',
              *data_options(data), 'train_cfg.max_epochs=1', option])
    metrics = load_tool('test').main([str(CONFIG), str(tmp_path / 'epoch_1.pth'), '--work-dir',
                                      str(tmp_path / 'test'), '--cfg-options', *data_options(data), option])
    assert metrics['accuracy/top1'] == val_accuracies(tmp_path)[-1]
    cfg = Config.fromfile(CONFIG)
    cfg.model.lora.base_dtype, cfg.model.backbone.pretrained = 'bfloat16', str(data / 'pretrained_vit.pth')
    dtypes = {name: param.dtype for name, param in _build(cfg).named_parameters()}
    assert dtypes['backbone.blocks.0.attn.qkv.base_layer.weight'] == torch.bfloat16
    assert dtypes['backbone.blocks.0.attn.qkv.lora_A.default.weight'] == torch.float32


def test_one_epoch_then_resume_equals_two_epochs(straight_run, data, tmp_path):
    log = train(tmp_path, data, 1, '--amp')  # --amp on CPU: a note, then plain float32
    assert 'no CUDA device' in log
    train(tmp_path, data, 2, '--resume')  # no value: from work_dir/last_checkpoint
    straight = load_checkpoint_file(straight_run / 'epoch_2.pth')
    resumed = load_checkpoint_file(tmp_path / 'epoch_2.pth')
    assert set(straight['state_dict']) == set(resumed['state_dict'])
    assert any('lora_B' in key for key in straight['state_dict'])
    for key, value in straight['state_dict'].items():
        assert torch.equal(value, resumed['state_dict'][key]), key
    for key, state in straight['optimizer']['state'].items():
        assert torch.equal(state['exp_avg'], resumed['optimizer']['state'][key]['exp_avg'])
    first = load_checkpoint_file(tmp_path / 'epoch_1.pth')
    assert not torch.equal(first['state_dict']['head.weight'], resumed['state_dict']['head.weight'])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def torchrun_train(config: Path, work_dir: Path, data: Path, epochs: int, *extra: str, options=()) -> str:
    """``torchrun --nproc-per-node 2 tools/train.py`` (gloo on CPU); ``options`` go to ``--cfg-options``."""
    return run_tool([sys.executable, '-m', 'torch.distributed.run', '--nproc-per-node', '2',
                     '--master-port', str(_free_port()), 'tools/train.py', str(config), '--work-dir', str(work_dir),
                     *extra, '--cfg-options', *data_options(data), f'train_cfg.max_epochs={epochs}', *options])


def test_torchrun_two_processes_train_one_job(data, tmp_path):
    log = torchrun_train(CONFIG, tmp_path, data, 1)
    assert 'Distributed training: True' in log and 'GPU number: 2' in log
    # 24 images split over two ranks: 12 per rank, batch 8 -> 2 iterations per epoch (3 for one process).
    assert 'Epoch(train) [1][2/2]' in log
    assert (tmp_path / 'epoch_1.pth').is_file() and (tmp_path / 'final_lora_weights').is_dir()


def _build(cfg: Config, **model_overrides) -> torch.nn.Module:
    init_default_scope('opentad_lora')
    model_cfg = cfg.model.copy()
    model_cfg.update(model_overrides)
    return MODELS.build(model_cfg).eval()


def test_merge_lora_outputs_equal_the_lora_model(straight_run, data, tmp_path, load_tool):
    merge = load_tool('merge_lora')
    options = data_options(data)[:1]
    checkpoint = str(straight_run / 'epoch_2.pth')
    merge.main([str(CONFIG), checkpoint, str(tmp_path / 'full'), '--cfg-options', *options])
    merge.main([str(CONFIG), checkpoint, str(tmp_path / 'adapter'), '--adapter-only', '--cfg-options', *options])
    assert sorted(p.name for p in (tmp_path / 'adapter').iterdir()) == ['adapter_config.json',
                                                                        'adapter_model.safetensors']
    cfg = Config.fromfile(str(CONFIG))
    cfg.merge_from_dict(dict(p.split('=', 1) for p in options))
    lora_model = merge.load_trained_model(cfg, checkpoint)
    plain = _build(cfg, lora=None)
    plain.load_state_dict(torch.load(tmp_path / 'full' / 'merged_model.pth', weights_only=True), strict=True)
    from_adapter = _build(cfg)
    load_adapter(from_adapter, straight_run / 'final_lora_weights')
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = lora_model(images)
        torch.testing.assert_close(plain(images), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(from_adapter(images), expected)
    untrained = _build(cfg, lora=None)
    assert not torch.allclose(untrained(images), expected, atol=1e-3)


def test_print_lora_info_lists_every_wrapped_layer(capsys, load_tool):
    table = load_tool('print_lora_info').main([str(CONFIG), '--cfg-options', 'model.backbone.pretrained=None'])
    assert table in capsys.readouterr().out
    assert table.count('backbone.blocks.') == 16 and 'backbone.blocks.3.mlp.fc2' in table and 'head' in table


def test_fsdp_resume_equals_straight_run_and_its_checkpoint_serves_test_tool(data, tmp_path, load_tool):
    """FSDP (FlexibleRunner + LoRAFSDPStrategy, two gloo processes): 1 epoch + --resume equals 2 epochs bit for
    bit (MMEngine 0.10.7's FSDP resume fails on current torch), and the rank-0 full checkpoint is an ordinary one."""
    straight, resumed = tmp_path / 'straight', tmp_path / 'resumed'
    torchrun_train(FSDP_CONFIG, straight, data, 2)
    torchrun_train(FSDP_CONFIG, resumed, data, 1)
    assert 'resumed epoch: 1' in torchrun_train(FSDP_CONFIG, resumed, data, 2, '--resume')
    want, got = load_checkpoint_file(straight / 'epoch_2.pth'), load_checkpoint_file(resumed / 'epoch_2.pth')
    assert set(want['state_dict']) == set(got['state_dict']) and any('lora_B' in k for k in want['state_dict'])
    for key, value in want['state_dict'].items():
        assert torch.equal(value, got['state_dict'][key]), key
    for key, state in want['optimizer']['state'].items():
        assert torch.equal(state['exp_avg'], got['optimizer']['state'][key]['exp_avg']), key
    metrics = load_tool('test').main([str(CONFIG), str(straight / 'epoch_2.pth'), '--work-dir', str(tmp_path / 't'),
                                      '--cfg-options', *data_options(data)])
    assert metrics['accuracy/top1'] == val_accuracies(straight)[-1] >= 2 * 100.0 / NUM_CLASSES


def test_fsdp_qlora_shards_4bit_bases_stored_as_float32(data, tmp_path):
    torchrun_train(FSDP_CONFIG, tmp_path, data, 1,
                   options=['model.lora.quantize_bits=4', 'model.lora.quant_storage=float32'])
    state = load_checkpoint_file(tmp_path / 'epoch_1.pth')['state_dict']
    packed = state['backbone.blocks.0.mlp.fc1.base_layer.weight']
    assert packed.dtype == torch.float32 and packed.numel() * 4 == 64 * 256 // 2  # 4 bits per weight
    assert state['backbone.blocks.0.mlp.fc1.lora_B.default.weight'].abs().sum() > 0  # LoRA trained
