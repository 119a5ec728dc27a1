"""EpochStreamTrainLoop: the plain loop's batches, exact resume, and loading that crosses epoch boundaries."""
import os
import random
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import pytest
from mmengine.config import Config
from mmengine.dataset import BaseDataset, DefaultSampler
from mmengine.evaluator import BaseMetric
from mmengine.hooks import Hook
from torch.utils.data import BatchSampler

from opentad_lora.engine import EpochStreamBatchSampler, EpochStreamTrainLoop
from opentad_lora.registry import LOOPS
from opentad_lora.engine.sample_seed import SampleSeededPipeline, get_loading_epoch

ADATAD_THUMOS = sorted((Path(__file__).resolve().parents[2] / 'configs' / 'adatad' / 'thumos').glob('*.py'))
EPOCHS, BATCH = 3, 3  # 13 points, batch 3, drop_last: 4 iterations per epoch, one point left out per epoch


class Jitter:
    """A random augmentation drawing from python, numpy and torch; with ``log``, it appends ``epoch index pid start
    end`` (monotonic seconds) for every load to that file, after sleeping ``delay`` seconds."""

    def __init__(self, log: Optional[str] = None, delay: float = 0.0) -> None:
        self.log, self.delay = log, delay

    def __call__(self, results: dict) -> dict:
        start = time.monotonic()
        time.sleep(self.delay)
        noise = np.random.normal(0, 0.3, 2) + random.uniform(-0.1, 0.1)
        inputs = torch.as_tensor(results['x'] + noise, dtype=torch.float32) * (1 + 0.1 * torch.rand(()))
        if self.log:
            with open(self.log, 'a') as file:
                file.write(f"{get_loading_epoch()} {results['sample_idx']} {os.getpid()} {start} {time.monotonic()}\n")
        return dict(inputs=inputs, data_samples=torch.tensor(results['y'], dtype=torch.float32))


class NoisyPoints(BaseDataset):
    """13 fixed 2-D points, target x0 - 2 x1, inputs jittered by :class:`Jitter` at every load."""

    def __init__(self, **jitter) -> None:
        super().__init__(pipeline=[Jitter(**jitter)], serialize_data=False)

    def load_data_list(self) -> list:
        x = np.random.default_rng(123).normal(size=(13, 2))
        return [dict(x=p, y=p[0] - 2 * p[1]) for p in x]


class PredictionCount(BaseMetric):
    """The number of validated samples (the validation between epochs ran on its own DataLoader)."""

    def process(self, data_batch, data_samples) -> None:
        self.results.append(len(data_samples))

    def compute_metrics(self, results: list) -> dict:
        return dict(count=sum(results))


class BatchRecorder(Hook):
    """Keeps every training batch's inputs and the monotonic time each iteration ended, by ``(epoch, batch_idx)``,
    and each validation's metrics; with ``step_time``, each iteration also sleeps that long (a slow training step)."""

    def __init__(self, step_time: float = 0.0) -> None:
        self.step_time = step_time
        self.batches: Dict[Tuple[int, int], torch.Tensor] = {}
        self.ends: Dict[Tuple[int, int], float] = {}
        self.val_metrics: List[dict] = []

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self.batches[runner.epoch, batch_idx] = torch.stack(data_batch['inputs'])
        time.sleep(self.step_time)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self.ends[runner.epoch, batch_idx] = time.monotonic()

    def after_val_epoch(self, runner, metrics=None) -> None:
        self.val_metrics.append(metrics)


def _train(make_runner, toy_net, work_dir: Path, loop: str, max_epochs: int = EPOCHS, step_time: float = 0.0,
           dataset: Optional[BaseDataset] = None, persistent_workers: bool = True,
           **kwargs) -> Tuple[BatchRecorder, dict]:
    """Train the toy LoRA net (LoRA dropout 0.1) with ``loop`` on 2 workers under EpochSeedHook; returns the batch
    recorder and the final weights."""
    torch.manual_seed(0)
    recorder = BatchRecorder(step_time)
    runner = make_runner(
        work_dir, model=toy_net(dropout=0.1),
        train_dataloader=dict(dataset=dataset or NoisyPoints(), sampler=dict(type='DefaultSampler', shuffle=True),
                              batch_size=BATCH, drop_last=True, num_workers=2,
                              persistent_workers=persistent_workers),
        train_cfg=dict(type=loop, max_epochs=max_epochs),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1),
                           epoch_seed=dict(type='EpochSeedHook')),
        custom_hooks=[recorder], **kwargs)
    runner.train()
    if loop == 'EpochStreamTrainLoop':
        assert runner.train_dataloader._iterator is None  # the configured loader is never iterated
        assert isinstance(runner.train_dataloader.dataset.pipeline, SampleSeededPipeline)  # whatever persistence
    else:  # the plain loop's persistent workers: stop them now, not whenever the garbage collector runs
        runner.train_dataloader._iterator._shutdown_workers()
    return recorder, runner.model.state_dict()


def test_stream_batch_sampler_runs_the_batch_sampler_epoch_after_epoch():
    sampler = DefaultSampler(list(range(7)), shuffle=True, seed=5)
    stream = EpochStreamBatchSampler(BatchSampler(sampler, 3, drop_last=True), start_epoch=1, max_epochs=3)
    expected = []
    for epoch in (1, 2):
        sampler.set_epoch(epoch)
        order = list(sampler)
        expected += [[(epoch, i) for i in order[:3]], [(epoch, i) for i in order[3:6]]]
    sampler.set_epoch(0)  # the stream sets each epoch itself
    assert len(stream) == 4 and list(stream) == expected
    assert expected[0] != expected[2]  # epochs 1 and 2 are shuffled differently


def test_stream_feeds_the_plain_loops_batches_with_validation_in_between(tmp_path, make_runner, toy_net):
    validation = dict(val_dataloader=dict(dataset=NoisyPoints(), sampler=dict(type='DefaultSampler', shuffle=False),
                                          batch_size=4, num_workers=1),
                      val_evaluator=dict(type=PredictionCount), val_cfg=dict())
    plain, _ = _train(make_runner, toy_net, tmp_path / 'plain', 'EpochBasedTrainLoop', **validation)
    stream, _ = _train(make_runner, toy_net, tmp_path / 'stream', 'EpochStreamTrainLoop', **validation)
    assert plain.val_metrics == stream.val_metrics == [dict(count=13)] * EPOCHS
    assert list(stream.batches) == list(plain.batches) == [(e, i) for e in range(EPOCHS) for i in range(4)]
    for key, batch in plain.batches.items():
        assert batch.shape == (BATCH, 2) and torch.equal(stream.batches[key], batch), key
    assert not torch.equal(plain.batches[0, 0], plain.batches[1, 0])  # epochs differ (shuffle, augmentation)


@pytest.mark.parametrize('persistent_workers', [True, False])
def test_resumed_stream_sees_the_same_batches_and_ends_with_the_same_weights(tmp_path, make_runner, toy_net,
                                                                             persistent_workers):
    """The stream's workers live across epochs either way, so EpochSeedHook seeds the samples either way."""
    run = dict(loop='EpochStreamTrainLoop', persistent_workers=persistent_workers)
    straight, straight_weights = _train(make_runner, toy_net, tmp_path / 'straight', **run)
    _train(make_runner, toy_net, tmp_path / 'first', max_epochs=2, **run)
    resumed, resumed_weights = _train(make_runner, toy_net, tmp_path / 'resumed', resume=True,
                                      load_from=str(tmp_path / 'first' / 'epoch_2.pth'), **run)
    assert list(resumed.batches) == [(2, i) for i in range(4)]
    for key, batch in resumed.batches.items():
        assert torch.equal(batch, straight.batches[key]), key
    for key, value in straight_weights.items():
        assert torch.equal(resumed_weights[key], value), key


def _loads(log: Path) -> List[Tuple[Optional[int], int, int, float]]:
    rows = [line.split() for line in log.read_text().splitlines()]
    return [(None if e == 'None' else int(e), int(i), int(pid), float(start)) for e, i, pid, start, _ in rows]


def _started_before(loads, moment: float) -> int:
    return sum(start < moment for *_, start in loads)


def test_stream_loads_the_next_epoch_while_the_last_iteration_trains_and_nothing_after(tmp_path, make_runner,
                                                                                          toy_net):
    logs = {loop: tmp_path / f'{loop}.log' for loop in ('EpochBasedTrainLoop', 'EpochStreamTrainLoop')}
    ends = {}
    for loop, log in logs.items():
        recorder, _ = _train(make_runner, toy_net, tmp_path / loop, loop, step_time=0.05,
                             dataset=NoisyPoints(log=str(log), delay=0.005))
        ends[loop] = recorder.ends
    plain, stream = _loads(logs['EpochBasedTrainLoop']), _loads(logs['EpochStreamTrainLoop'])
    per_epoch = 4 * BATCH
    for epoch in range(EPOCHS - 1):  # loads begun when epoch `epoch`'s last iteration ended
        assert _started_before(plain, ends['EpochBasedTrainLoop'][epoch, 3]) == per_epoch * (epoch + 1)
        assert _started_before(stream, ends['EpochStreamTrainLoop'][epoch, 3]) > per_epoch * (epoch + 1)
        first_next = min(start for e, *_, start in stream if e == epoch + 1)
        assert first_next < ends['EpochStreamTrainLoop'][epoch, 3]
    # exactly the 3 epochs' 12 samples each, every (epoch, index) once; then the stream's workers are gone
    assert sorted(Counter(e for e, *_ in stream).items()) == [(e, per_epoch) for e in range(EPOCHS)]
    assert len({(e, i) for e, i, *_ in stream}) == len(stream) == len(plain) == EPOCHS * per_epoch
    pids = {pid for *_, pid, _ in stream}
    assert len(pids) == 2 and not any(Path(f'/proc/{pid}').exists() for pid in pids)


@pytest.mark.parametrize('path', ADATAD_THUMOS, ids=lambda p: p.stem)
def test_adatad_thumos_configs_stream_with_seeded_samples(path):
    cfg = Config.fromfile(str(path))
    assert LOOPS.get(cfg.train_cfg.type) is EpochStreamTrainLoop
    assert (cfg.train_cfg.max_epochs, cfg.train_cfg.val_begin, cfg.train_cfg.val_interval) == (60, 40, 2)
    assert cfg.default_hooks.epoch_seed.type == 'EpochSeedHook' and cfg.train_dataloader.num_workers > 0
