"""End to end: synthetic scenes -> tools/train.py (LoRA strategy A) -> tools/test.py --show-dir; AbsRel goes down."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

import opentad_lora.models  # noqa: F401
from opentad_lora.datasets.depth import COLMAPMultiViewDataset
from opentad_lora.evaluation.depth import DepthMetric
from opentad_lora.registry import MODELS

ROOT = Path(__file__).resolve().parents[3]
CONFIG = ROOT / 'configs' / 'depth' / 'vggt_tiny_lora_synthetic_strategy_a.py'


def _tool(relative: str):
    spec = importlib.util.spec_from_file_location(Path(relative).stem, ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _abs_rel_of_the_pretrained_model(cfg: Config) -> float:
    model = MODELS.build(cfg.model.to_dict()).eval()
    dataset = COLMAPMultiViewDataset(**{k: v for k, v in cfg.test_dataloader.dataset.items() if k != 'type'})
    metric = DepthMetric()
    with torch.no_grad():
        for index in range(len(dataset)):
            sample = dataset[index]
            metric.process(None, model([sample['inputs']], [sample['data_samples']], mode='predict'))
    return metric.evaluate(len(dataset))['depth/abs_rel']


def test_lora_finetuning_lowers_abs_rel_and_test_tool_rebuilds_it(tmp_path):
    data = tmp_path / 'data'
    _tool('tools/data/make_synthetic_scenes.py').main(
        ['--out', str(data), '--num-scenes', '1', '--num-frames', '10', '--points-per-image', '150'])
    overrides = {f'{split}_dataloader.dataset.{key}': value for split in ('train', 'val', 'test')
                 for key, value in (('data_root', str(data)), ('train_ratio', 0.6))}
    overrides.update({'train_dataloader.dataset.stride': 1, 'model.pretrained': str(data / 'vggt_tiny_init.pth'),
                      'train_cfg.max_epochs': 8, 'train_cfg.val_interval': 8, 'default_hooks.checkpoint.interval': 8,
                      'default_hooks.logger.interval': 1, 'optim_wrapper.optimizer.lr': 3e-3})
    options = [f'{key}={value}' for key, value in overrides.items()]
    cfg = Config.fromfile(str(CONFIG))
    cfg.merge_from_dict(overrides)
    before = _abs_rel_of_the_pretrained_model(cfg)

    work_dir = tmp_path / 'work'
    _tool('tools/train.py').main([str(CONFIG), '--work-dir', str(work_dir), '--cfg-options', *options,
                                  'experiment_name=depth_finetune_train'])
    checkpoint = work_dir / 'epoch_8.pth'
    state = torch.load(checkpoint, map_location='cpu', weights_only=False)['state_dict']
    assert state and all('.lora_' in key for key in state)  # only the adapters: the base comes from pretrained
    assert (work_dir / 'final_lora_weights' / 'adapter_model.safetensors').is_file()

    show_dir = tmp_path / 'vis'
    metrics = _tool('tools/test.py').main([str(CONFIG), str(checkpoint), '--work-dir', str(tmp_path / 'test'),
                                           '--show-dir', str(show_dir), '--cfg-options', *options,
                                           'experiment_name=depth_finetune_test'])
    after = metrics['depth/abs_rel']
    assert after < 0.85 * before, (before, after)
    # The test tool rebuilt exactly the trained model (pretrained base + adapters): same score as the last validation.
    scalars = next(work_dir.glob('*/vis_data/scalars.json')).read_text().splitlines()
    last_val = [json.loads(line) for line in scalars if 'depth/abs_rel' in line][-1]
    assert last_val['depth/abs_rel'] == pytest.approx(after, rel=1e-6)
    assert 0 <= metrics['depth/delta1'] <= 1 and 'depth/scene_00/abs_rel' in metrics
    # One figure per test sequence (windows of the 4 test frames), named by its first and last frame.
    windows = COLMAPMultiViewDataset(**{k: v for k, v in cfg.test_dataloader.dataset.items() if k != 'type'})
    expected = [f'{names[0]}-{names[-1]}.png' for names in
                ([Path(n).stem for n in windows[i]['data_samples'].frame_names] for i in range(len(windows)))]
    assert sorted(p.name for p in (show_dir / 'scene_00').iterdir()) == sorted(expected) and expected
