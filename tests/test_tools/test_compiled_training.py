"""Compiled training through tools/train.py (``--compile`` with ``compile.backend`` from ``--cfg-options``), on CPU.

A one-block LoRA ViT (the quickstart config made tiny). The backend here is ``aot_eager``: dynamo and AOTAutograd
trace the loss forward and its backward into graphs exactly as for inductor, but eager kernels run them, so no C
compiler is invoked (inductor itself is tested on a smaller model in tests/test_engine/test_compile_hook.py, since
its C++ compile costs minutes on a loaded 2-core machine). Checked: the compiled run trains like the eager one
(LoRA, and QLoRA-4 with activation checkpointing), 1 compiled epoch + ``--resume`` equals 2 eager epochs, and the
compiled run's checkpoint gives, in an eager tools/test.py, the validation accuracy the run logged.
"""
import json
from pathlib import Path
from typing import List

import pytest
import torch

from opentad_lora.engine.checkpoint import load_checkpoint_file

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / 'configs' / 'quickstart' / 'vit_lora_synthetic_cls.py'


@pytest.fixture(scope='module')
def tiny_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp('config') / 'vit_tiny_lora.py'
    path.write_text(f"_base_ = ['{QUICKSTART}']\n"
                    "model = dict(backbone=dict(embed_dim=32, depth=1, num_heads=2))\n")
    return path


@pytest.fixture(scope='module')
def tiny_ema_config(tiny_config) -> Path:
    """The tiny config with OpenTAD's EMA of the trainable tensors (momentum raised so 2 epochs move it)."""
    path = tiny_config.with_name('vit_tiny_lora_ema.py')
    path.write_text(f"_base_ = ['{tiny_config}']\n"
                    "custom_hooks = [dict(type='LoRACheckpointHook', trainable_only=True, interval=-1, save_final=True),\n"
                    "                dict(type='TrainableEMAHook', momentum=0.2)]\n")
    return path


@pytest.fixture(scope='module')
def data(tiny_config, tmp_path_factory, load_tool) -> Path:
    out = tmp_path_factory.mktemp('synthetic_cls')
    load_tool('data/make_synthetic_images').main(['--out', str(out), '--config', str(tiny_config),
                                                  '--train-per-class', '4', '--val-per-class', '4'])
    return out


def options(data: Path, *extra: str) -> List[str]:
    return ['--cfg-options', f'model.backbone.pretrained={data / "pretrained_vit.pth"}',
            f'train_dataloader.dataset.data_root={data / "train"}', f'val_dataloader.dataset.data_root={data / "val"}',
            f'test_dataloader.dataset.data_root={data / "val"}', 'train_dataloader.batch_size=8',
            'param_scheduler.1.end=2', 'default_hooks.logger.interval=1', *extra]


def train(load_tool, config: Path, data: Path, work_dir: Path, epochs: int, *flags: str, extra=()) -> Path:
    torch._dynamo.reset()  # every run compiles afresh (dynamo's cache is per process)
    load_tool('train').main([str(config), '--work-dir', str(work_dir), *flags,
                             *options(data, f'train_cfg.max_epochs={epochs}', *extra)])
    return work_dir


def logged(work_dir: Path, key: str) -> List[float]:
    lines = [json.loads(line) for path in sorted(work_dir.glob('*/vis_data/scalars.json')) for line in path.open()]
    return [line[key] for line in lines if key in line]


def _assert_checkpoints_close(want: Path, got: Path) -> None:
    want, got = load_checkpoint_file(want)['state_dict'], load_checkpoint_file(got)['state_dict']
    assert set(want) == set(got) and any('lora_B' in key for key in want)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=key)


QLORA4_WITH_CP = ['model.lora.quantize_bits=4', 'model.lora.quant_storage=float32', 'model.backbone.with_cp=True']


@pytest.mark.parametrize('variant, compile_options', [
    ([], []),
    # quant_storage=float32: MMEngine's init_weights takes the mean of every parameter, which a uint8-packed 4-bit
    # weight of this classifier does not allow.
    (QLORA4_WITH_CP, []),
    # regional compilation of the (one) ViT block, named by a pattern; checkpointing wraps the compiled block
    (QLORA4_WITH_CP, ['compile.regional=backbone.blocks.*']),
], ids=['lora', 'qlora4_with_cp', 'qlora4_with_cp_regional'])
def test_compiled_epoch_then_compiled_resume_equals_two_eager_epochs(variant, compile_options, tiny_config, data,
                                                                     tmp_path, load_tool):
    compiled = [*variant, 'compile.backend=aot_eager', *compile_options]
    eager = train(load_tool, tiny_config, data, tmp_path / 'eager', 2, extra=variant)
    torch._dynamo.utils.counters.clear()
    resumed = train(load_tool, tiny_config, data, tmp_path / 'resumed', 1, '--compile', extra=compiled)
    assert torch._dynamo.utils.counters['stats']['unique_graphs'] >= 1  # the loss forward went through dynamo
    if compile_options:  # only the block: one graph for both iterations, no graph break
        assert torch._dynamo.utils.counters['stats']['unique_graphs'] == 1
        assert not torch._dynamo.utils.counters['graph_break']
    train(load_tool, tiny_config, data, resumed, 2, '--compile', '--resume', extra=compiled)
    eager_losses, compiled_losses = logged(eager, 'loss'), logged(resumed, 'loss')
    assert len(compiled_losses) == 4 and compiled_losses[-1] < compiled_losses[0]  # 2 iterations + 2 resumed
    torch.testing.assert_close(torch.tensor(compiled_losses), torch.tensor(eager_losses), rtol=1e-5, atol=0)
    _assert_checkpoints_close(eager / 'epoch_2.pth', resumed / 'epoch_2.pth')
    metrics = load_tool('test').main([str(tiny_config), str(resumed / 'epoch_2.pth'), '--work-dir',
                                      str(tmp_path / 'test'), *options(data, *variant)])
    assert metrics['accuracy/top1'] == logged(resumed, 'accuracy/top1')[-1]


def test_compiled_run_with_ema_resumes_to_the_eager_average(tiny_ema_config, data, tmp_path, load_tool):
    """The EMA hook swaps the averaged weights into the compiled model for validation and back: the compiled run
    (1 epoch + ``--resume``) logs the eager run's losses and validation accuracy and saves its average."""
    eager = train(load_tool, tiny_ema_config, data, tmp_path / 'eager', 2)
    resumed = train(load_tool, tiny_ema_config, data, tmp_path / 'resumed', 1, '--compile',
                    extra=['compile.backend=aot_eager'])
    train(load_tool, tiny_ema_config, data, resumed, 2, '--compile', '--resume', extra=['compile.backend=aot_eager'])
    torch.testing.assert_close(torch.tensor(logged(resumed, 'loss')), torch.tensor(logged(eager, 'loss')), rtol=1e-5,
                               atol=0)
    assert logged(resumed, 'accuracy/top1') == logged(eager, 'accuracy/top1')
    _assert_checkpoints_close(eager / 'epoch_2.pth', resumed / 'epoch_2.pth')
    want = load_checkpoint_file(eager / 'epoch_2.pth')
    got = load_checkpoint_file(resumed / 'epoch_2.pth')
    assert any('lora_B' in key for key in want['ema_state_dict'])
    for key, value in want['ema_state_dict'].items():
        torch.testing.assert_close(got['ema_state_dict'][key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert not torch.equal(want['state_dict']['head.weight'], want['ema_state_dict']['module.head.weight'])
