"""A smaller run of the AdaTAD QLoRA quickstart through the real tools: it learns, tests and resumes exactly.

One module-scoped run (synthetic THUMOS data -> ``tools/train.py``) is shared by the tests: the trained model must
detect the synthetic actions, ``tools/test.py`` on the saved (trimmed) checkpoint must reproduce the train-time
mAP, a run resumed from the second-to-last checkpoint must end with bitwise the same weights, and the merged export
must predict like the QLoRA model.
"""
import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Dict, List

import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.registry import init_default_scope

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / 'configs' / 'quickstart' / 'adatad_qlora_synthetic_thumos.py'
EPOCHS = 8
WINDOW = 64


def load_tool(relative: str) -> ModuleType:
    """Import a script of ``tools/`` as a module (they are not a package)."""
    path = REPO / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def small_options(data: Path) -> Dict[str, object]:
    """Config overrides shrinking the quickstart: 2 classes, 64-frame windows, the data under ``data``."""
    ann, class_map, videos = (data / 'annotations' / 'thumos_14_anno.json', data / 'annotations' / 'category_idx.txt',
                              data / 'raw_data' / 'video')
    options = {'model.backbone.pretrained': data / 'pretrained_videomae_tiny.pth',
               'model.backbone.total_frames': WINDOW, 'model.projection.max_seq_len': WINDOW // 2,
               'model.rpn_head.num_classes': 2,
               'train_cfg.max_epochs': EPOCHS, 'train_cfg.val_interval': EPOCHS, 'param_scheduler.1.end': EPOCHS,
               'default_hooks.checkpoint.interval': EPOCHS - 1,  # and the last epoch (save_last)
               'val_evaluator.ann_file': ann, 'test_evaluator.ann_file': ann}
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        options.update({f'{loader}.dataset.ann_file': ann, f'{loader}.dataset.class_map': class_map,
                        f'{loader}.dataset.data_path': videos, f'{loader}.dataset.window_size': WINDOW})
    return {key: str(value) if isinstance(value, Path) else value for key, value in options.items()}


def cli(options: Dict[str, object], experiment: str) -> List[str]:
    """``--cfg-options`` arguments of ``options`` plus a unique experiment name."""
    return ['--cfg-options', *(f'{k}={v}' for k, v in options.items()), f'experiment_name={experiment}']


def last_val_metrics(work_dir: Path) -> Dict[str, float]:
    """The last validation scalars LocalVisBackend wrote under ``work_dir/<timestamp>/vis_data``."""
    (scalars, ) = work_dir.glob('*/vis_data/scalars.json')
    rows = [json.loads(line) for line in scalars.read_text().splitlines()]
    return {k: v for k, v in [row for row in rows if 'tad/average_mAP' in row][-1].items() if k.startswith('tad/')}


def train_losses(work_dir: Path) -> List[float]:
    (scalars, ) = work_dir.glob('*/vis_data/scalars.json')
    return [row['loss'] for row in map(json.loads, scalars.read_text().splitlines()) if 'loss' in row]


@pytest.fixture(scope='module')
def quickstart(tmp_path_factory):
    """Make the data, train ``EPOCHS`` epochs with tools/train.py (single-threaded: CPU CI is shared)."""
    root = tmp_path_factory.mktemp('tad_quickstart')
    data, work = root / 'data', root / 'work'
    load_tool('tools/data/make_synthetic_thumos.py').main([
        '--out', str(data), '--num-classes', '2', '--num-train', '16', '--num-val', '6', '--min-frames', '80',
        '--max-frames', '128', '--min-action', '12', '--max-action', '32', '--max-actions', '2', '--seed', '1'])
    options = small_options(data)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        load_tool('tools/train.py').main([str(CONFIG), '--work-dir', str(work), *cli(options, 'tad_qs_train')])
        yield dict(root=root, data=data, work=work, options=options)
    finally:
        torch.set_num_threads(threads)


def test_quickstart_learns_to_detect(quickstart):
    losses = train_losses(quickstart['work'])
    assert losses[-1] < 0.5 * losses[0]
    metrics = last_val_metrics(quickstart['work'])
    assert metrics['tad/mAP@0.50'] >= 0.3, metrics
    assert (quickstart['work'] / 'final_lora_weights' / 'adapter_model.safetensors').is_file()


def test_tools_test_reproduces_train_time_map(quickstart):
    checkpoint = quickstart['work'] / f'epoch_{EPOCHS}.pth'
    saved = torch.load(checkpoint, map_location='cpu', weights_only=False)['state_dict']
    assert not any('base_layer.weight' in key for key in saved), 'the frozen 4-bit base must not be saved'
    metrics = load_tool('tools/test.py').main([
        str(CONFIG), str(checkpoint), '--work-dir', str(quickstart['root'] / 'test'),
        *cli(quickstart['options'], 'tad_qs_test')])
    expected = last_val_metrics(quickstart['work'])
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-6), key


def test_resume_matches_uninterrupted_run(quickstart):
    """Bitwise-equal final weights (so equal predictions and mAP) after resuming the last epoch."""
    resumed = quickstart['root'] / 'resumed'
    options = {k: v for k, v in quickstart['options'].items() if not k.startswith('val_')}  # --no-validate
    load_tool('tools/train.py').main([
        str(CONFIG), '--work-dir', str(resumed), '--resume', str(quickstart['work'] / f'epoch_{EPOCHS - 1}.pth'),
        '--no-validate', *cli(options, 'tad_qs_resume')])
    full = torch.load(quickstart['work'] / f'epoch_{EPOCHS}.pth', map_location='cpu', weights_only=False)
    again = torch.load(resumed / f'epoch_{EPOCHS}.pth', map_location='cpu', weights_only=False)
    assert full['state_dict'].keys() == again['state_dict'].keys()
    for key, value in full['state_dict'].items():
        torch.testing.assert_close(again['state_dict'][key], value, rtol=0, atol=0, msg=key)
    assert again['meta']['epoch'] == full['meta']['epoch'] == EPOCHS


def test_merged_export_predicts_like_the_qlora_model(quickstart):
    from opentad_lora.registry import DATASETS, MODELS

    init_default_scope('opentad_lora')
    cfg = Config.fromfile(CONFIG)
    cfg.merge_from_dict({k: v for k, v in quickstart['options'].items() if not k.startswith('param_scheduler')})
    qlora = MODELS.build(cfg.model).eval()
    checkpoint = torch.load(quickstart['work'] / f'epoch_{EPOCHS}.pth', map_location='cpu', weights_only=False)
    qlora.load_state_dict(checkpoint['state_dict'], strict=False)
    plain_cfg = cfg.model.copy()
    plain_cfg.backbone = {k: v for k, v in cfg.model.backbone.items() if not k.startswith(('lora_', 'quantize'))}
    plain_cfg.backbone.update(type='VisionTransformerAdapter', pretrained=None)
    plain = MODELS.build(plain_cfg).eval()
    plain.load_state_dict(torch.load(quickstart['work'] / 'merged_model' / 'model.pth', weights_only=True))
    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    batch = qlora.data_preprocessor(pseudo_collate([dataset[0], dataset[1]]), False)
    with torch.no_grad():
        logits_q, offsets_q = qlora(batch['inputs'], batch['data_samples'], mode='tensor')
        logits_p, offsets_p = plain(batch['inputs'], batch['data_samples'], mode='tensor')
    for a, b in zip(logits_q + offsets_q, logits_p + offsets_p):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_final_adapter_folder_restores_every_trained_tensor(quickstart):
    """final_lora_weights/ is complete: LoRA, the AdaTAD adapters and the detector (PEFT's modules_to_save)."""
    from opentad_lora.peft import load_adapter
    from opentad_lora.registry import MODELS

    init_default_scope('opentad_lora')
    cfg = Config.fromfile(CONFIG)
    cfg.merge_from_dict({k: v for k, v in quickstart['options'].items() if not k.startswith('param_scheduler')})
    model = MODELS.build(cfg.model)
    load_adapter(model, quickstart['work'] / 'final_lora_weights')
    saved = torch.load(quickstart['work'] / f'epoch_{EPOCHS}.pth', map_location='cpu', weights_only=False)
    trained = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert any('.adapter.' in name for name in trained) and any(name.startswith('rpn_head') for name in trained)
    for name, param in trained.items():
        assert torch.equal(param, saved['state_dict'][name]), name
