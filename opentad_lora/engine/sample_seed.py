"""Seed every training sample's augmentation from ``(seed, epoch, sample index)``, so persistent workers resume.

A DataLoader with ``persistent_workers=True`` keeps its worker processes, and their random generators, from one
epoch to the next; a run resumed at epoch ``k`` starts fresh workers, whose generators are where the uninterrupted
run's were at epoch 0, so it would crop and flip other windows. Seeding each sample from ``(seed, epoch, index)``
makes its random draws independent of which worker loads it and of what that worker drew before: resumed and
uninterrupted runs load the same data, whatever the number of workers.

Workers learn the epoch in one of two ways. With MMEngine's ``EpochBasedTrainLoop`` the main process sets one shared
integer before each epoch (workers are forked, or spawned, holding it): right, because that loop loads an epoch's
samples only during the epoch. ``EpochStreamTrainLoop`` loads epoch ``e + 1``'s samples while epoch ``e`` trains,
so there the epoch travels with each index and is set for the one sample being loaded (:func:`loading_epoch`),
overriding the shared integer.
"""
import contextlib
import contextvars
import hashlib
import multiprocessing
import random
from typing import Callable, Iterator, Optional

import numpy as np
import torch
from mmengine.dataset import BaseDataset


def derive_seed(*parts) -> int:
    """A 32-bit seed hashed from ``parts`` (neighbouring inputs give unrelated seeds)."""
    digest = hashlib.sha256('/'.join(str(part) for part in parts).encode()).digest()
    return int.from_bytes(digest[:4], 'little')


# The epoch of the sample this process (thread) is loading now, set by ``loading_epoch``; None: the shared integer.
_LOADING_EPOCH: contextvars.ContextVar = contextvars.ContextVar('opentad_lora_loading_epoch', default=None)


@contextlib.contextmanager
def loading_epoch(epoch: int) -> Iterator[None]:
    """Seed the samples loaded inside the block as samples of ``epoch`` (process- and thread-local)."""
    token = _LOADING_EPOCH.set(int(epoch))
    try:
        yield
    finally:
        _LOADING_EPOCH.reset(token)


def get_loading_epoch() -> Optional[int]:
    """The epoch of the sample being loaded here (set by :func:`loading_epoch`), or None outside one."""
    return _LOADING_EPOCH.get()


class SampleSeededPipeline:
    """Runs ``pipeline`` with ``random``, ``numpy`` and torch's CPU generator seeded from ``(seed, epoch,
    results['sample_idx'])``, restoring the caller's generator states afterwards.

    Args:
        pipeline: The dataset's pipeline (``results -> results``).
        seed: Base seed.
        epoch: Shared integer holding the current epoch (``multiprocessing.RawValue('q')``); a
            :func:`loading_epoch` around the load takes precedence.
    """

    def __init__(self, pipeline: Callable, seed: int, epoch) -> None:
        self.pipeline = pipeline
        self.seed = seed
        self.epoch = epoch

    def __call__(self, results: dict):
        epoch = get_loading_epoch()
        value = derive_seed(self.seed, self.epoch.value if epoch is None else epoch, 'sample', results['sample_idx'])
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
