"""Seed every training sample's augmentation from ``(seed, epoch, sample index)``, so persistent workers resume.

A DataLoader with ``persistent_workers=True`` keeps its worker processes, and their random generators, from one
epoch to the next; a run resumed at epoch ``k`` starts fresh workers, whose generators are where the uninterrupted
run's were at epoch 0, so it would crop and flip other windows. Seeding each sample from ``(seed, epoch, index)``
makes its random draws independent of which worker loads it and of what that worker drew before: resumed and
uninterrupted runs load the same data, whatever the number of workers. Workers learn the epoch through one shared
integer that the main process sets before each epoch (workers are forked, or spawned, holding it).
"""
import hashlib
import multiprocessing
import random
from typing import Callable

import numpy as np
import torch
from mmengine.dataset import BaseDataset


def derive_seed(*parts) -> int:
    """A 32-bit seed hashed from ``parts`` (neighbouring inputs give unrelated seeds)."""
    digest = hashlib.sha256('/'.join(str(part) for part in parts).encode()).digest()
    return int.from_bytes(digest[:4], 'little')


class SampleSeededPipeline:
    """Runs ``pipeline`` with ``random``, ``numpy`` and torch's CPU generator seeded from ``(seed, epoch,
    results['sample_idx'])``, restoring the caller's generator states afterwards.

    Args:
        pipeline: The dataset's pipeline (``results -> results``).
        seed: Base seed.
        epoch: Shared integer holding the current epoch (``multiprocessing.RawValue('q')``).
    """

    def __init__(self, pipeline: Callable, seed: int, epoch) -> None:
        self.pipeline = pipeline
        self.seed = seed
        self.epoch = epoch

    def __call__(self, results: dict):
        value = derive_seed(self.seed, self.epoch.value, 'sample', results['sample_idx'])
        states = random.getstate(), np.random.get_state(), torch.get_rng_state()
        random.seed(value)
        np.random.seed(value)
        torch.default_generator.manual_seed(value)
        try:
            return self.pipeline(results)
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.set_rng_state(states[2])

    def __repr__(self) -> str:
        return f'{type(self).__name__}(seed={self.seed}, pipeline={self.pipeline!r})'


def seed_samples_by_epoch(dataset, seed: int):
    """Wrap ``dataset.pipeline`` in :class:`SampleSeededPipeline`; returns the shared epoch to set before each
    epoch, or None for a dataset that is not an MMEngine ``BaseDataset`` (no pipeline or ``sample_idx``)."""
    if not isinstance(dataset, BaseDataset):
        return None
    if isinstance(dataset.pipeline, SampleSeededPipeline):
        return dataset.pipeline.epoch
    epoch = multiprocessing.RawValue('q', 0)
    dataset.pipeline = SampleSeededPipeline(dataset.pipeline, seed, epoch)
    return epoch
