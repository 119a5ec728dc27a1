"""Bit-exact resume with persistent DataLoader workers: samples are seeded from (seed, epoch, index)."""
import json
import random

import cv2
import numpy as np
import pytest
import torch
from mmengine.dataset import BaseDataset
from mmengine.registry import init_default_scope

from opentad_lora.datasets.tad import ThumosPaddingDataset
from opentad_lora.engine.sample_seed import SampleSeededPipeline, seed_samples_by_epoch


def jitter(results: dict) -> dict:
    """A random augmentation drawing from all three generators (python, numpy, torch)."""
    noise = np.random.normal(0, 0.3, 2) + random.uniform(-0.1, 0.1)
    inputs = torch.as_tensor(results['x'] + noise, dtype=torch.float32) * (1 + 0.1 * torch.rand(()))
    return dict(inputs=inputs, data_samples=torch.tensor(results['y'], dtype=torch.float32))


class JitteredPoints(BaseDataset):
    """12 fixed 2-D points, target x0 - 2 x1, inputs jittered by :func:`jitter` at every load."""

    def __init__(self) -> None:
        super().__init__(pipeline=[jitter], serialize_data=False)

    def load_data_list(self) -> list:
        x = np.random.default_rng(123).normal(size=(12, 2))
        return [dict(x=p, y=p[0] - 2 * p[1]) for p in x]


def _straight_and_resumed(tmp_path, make_runner, seed_samples: bool):
    hooks = dict(logger=dict(type='LoggerHook', interval=1), checkpoint=dict(type='CheckpointHook', interval=1),
                 epoch_seed=dict(type='EpochSeedHook', seed_samples=seed_samples))
    loader = dict(dataset=JitteredPoints(), sampler=dict(type='DefaultSampler', shuffle=True), batch_size=3,
                  num_workers=1, persistent_workers=True)
    states = {}
    for name, epochs, extra in (('straight', 2, {}), ('first', 1, {}), ('resumed', 2, dict(
            resume=True, load_from=str(tmp_path / 'first' / 'epoch_1.pth')))):
        runner = make_runner(tmp_path / name, max_epochs=epochs, default_hooks=hooks, train_dataloader=loader,
                             param_scheduler=[], **extra)
        runner.train()
        states[name] = runner.model.state_dict()
        runner.train_dataloader._iterator._shutdown_workers()  # now, not whenever the garbage collector runs
    return states['straight'], states['resumed']


def test_resume_with_persistent_workers_is_exact(tmp_path, make_runner):
    straight, resumed = _straight_and_resumed(tmp_path / 'plain', make_runner, seed_samples=False)
    assert not all(torch.equal(straight[k], resumed[k]) for k in straight)  # the control: other jitter on resume
    straight, resumed = _straight_and_resumed(tmp_path / 'seeded', make_runner, seed_samples=True)
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def test_sample_seed_depends_on_epoch_and_index_only_and_restores_the_caller_state():
    dataset = JitteredPoints()
    epoch = seed_samples_by_epoch(dataset, seed=7)
    assert isinstance(dataset.pipeline, SampleSeededPipeline) and seed_samples_by_epoch(dataset, 7) is epoch
    np.random.seed(0)
    expected_next = np.random.rand()
    np.random.seed(0)
    first = dataset[4]['inputs']
    assert np.random.rand() == expected_next  # the caller's generator is untouched
    np.random.rand(50)
    assert torch.equal(dataset[4]['inputs'], first)  # whatever was drawn in between
    assert not torch.equal(dataset[5]['inputs'], first)
    epoch.value = 1
    assert not torch.equal(dataset[4]['inputs'], first)
    assert seed_samples_by_epoch(torch.utils.data.TensorDataset(torch.zeros(2)), 7) is None


@pytest.mark.parametrize('num_workers', [0, 2])
def test_samples_do_not_depend_on_the_worker(num_workers):
    dataset = JitteredPoints()
    seed_samples_by_epoch(dataset, seed=7)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=num_workers)
    reference = torch.stack([dataset[i]['inputs'] for i in range(len(dataset))])
    assert torch.equal(torch.stack([item['inputs'] for item in loader]), reference)


def _tiny_thumos(root) -> ThumosPaddingDataset:
    """One 60-frame mp4 whose frame t is grey level 2 t + 10 (the window position shows in the pixels)."""
    (root / 'video').mkdir()
    writer = cv2.VideoWriter(str(root / 'video' / 'v.mp4'), cv2.VideoWriter_fourcc(*'mp4v'), 10, (32, 24))
    for t in range(60):
        writer.write(np.full((24, 32, 3), 2 * t + 10, np.uint8))
    writer.release()
    (root / 'classes.txt').write_text('Billiards\n')
    (root / 'anno.json').write_text(json.dumps(dict(database=dict(v=dict(
        subset='training', duration=6.0, frame=60, annotations=[dict(segment=[1.0, 5.0], label='Billiards')])))))
    init_default_scope('opentad_lora')
    pipeline = [dict(type='PrepareVideoInfo'), dict(type='LoadFrames', method='random_trunc', trunc_thresh=0.1),
                dict(type='RandomCrop', crop_size=16), dict(type='Flip'), dict(type='PackTADInputs')]
    return ThumosPaddingDataset(ann_file=str(root / 'anno.json'), subset_name='training', class_map=str(
        root / 'classes.txt'), data_path=str(root / 'video'), window_size=16, pipeline=pipeline)


def test_tad_windows_of_a_resumed_epoch_equal_the_persistent_workers_ones(tmp_path):
    """Random windows, crops and flips loaded by a persistent worker in epoch 1 == by a fresh worker (a resume)."""
    dataset = _tiny_thumos(tmp_path)
    epoch = seed_samples_by_epoch(dataset, seed=3)

    def load(loader) -> torch.Tensor:
        return torch.stack([item['inputs'] for item in loader])

    persistent = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=1, persistent_workers=True)
    first = load(persistent)
    epoch.value = 1
    second = load(persistent)
    resumed = load(torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=1))
    assert not torch.equal(first, second)  # epochs draw other windows
    assert torch.equal(second, resumed)
