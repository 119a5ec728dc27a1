"""``EpochStreamTrainLoop``: an epoch-based train loop whose DataLoader keeps loading across epoch boundaries.

PyTorch's DataLoader starts loading an epoch's batches only when ``iter(dataloader)`` is called at the start of
that epoch, even with ``persistent_workers=True``; when one batch takes seconds to decode (AdaTAD: two 768-frame
windows), the first iteration of every epoch waits that long for data. This loop instead draws every epoch's
batches from ONE iterator over a DataLoader whose batch sampler runs the runner's batch sampler for epochs
``e, e + 1, ..., max_epochs - 1`` in a row, so the workers prefetch epoch ``e + 1`` while epoch ``e`` trains.

Each index travels with its epoch (``(epoch, index)``); :class:`EpochTaggedDataset` loads the sample under
:func:`~.sample_seed.loading_epoch`, so a pipeline seeded by :class:`~.EpochSeedHook` draws from
``(seed, epoch, index)`` alone: the batches equal those of ``EpochBasedTrainLoop`` with persistent workers, and a
resumed run (which starts the stream at the resumed epoch) loads the same batches as an uninterrupted one.
"""
import logging
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
from mmengine.logging import print_log
from mmengine.runner import EpochBasedTrainLoop
from torch.utils.data import DataLoader, Dataset, IterableDataset

from opentad_lora.registry import LOOPS

from .sample_seed import SampleSeededPipeline, loading_epoch


class EpochStreamBatchSampler:
    """The batches of ``batch_sampler`` for ``start_epoch .. max_epochs - 1``, each index as ``(epoch, index)``.

    Before each epoch it calls ``set_epoch(epoch)`` on the batch sampler's sampler (what ``DistSamplerSeedHook``
    does for the plain loop), so the order of each epoch is the one that loop sees; ``drop_last`` and any custom
    batching are the batch sampler's own. The sampler's order must depend on its epoch only (MMEngine's
    ``DefaultSampler`` shuffles by ``seed + epoch``): it is drawn up to one epoch ahead.
    """

    def __init__(self, batch_sampler, start_epoch: int, max_epochs: int) -> None:
        self.batch_sampler = batch_sampler
        self.epochs = range(start_epoch, max_epochs)

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        sampler = getattr(self.batch_sampler, 'sampler', None)
        for epoch in self.epochs:
            if hasattr(sampler, 'set_epoch'):
                sampler.set_epoch(epoch)
            for batch in self.batch_sampler:
                yield [(epoch, index) for index in batch]

    def __len__(self) -> int:
        return len(self.epochs) * len(self.batch_sampler)


class EpochTaggedDataset(Dataset):
    """``dataset[(epoch, index)]`` is ``dataset[index]`` loaded as a sample of ``epoch``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, int]):
        epoch, index = key
        with loading_epoch(epoch):
            return self.dataset[index]


def epoch_stream_dataloader(loader: DataLoader, start_epoch: int, max_epochs: int) -> DataLoader:
    """A DataLoader like ``loader`` (dataset, batching, collate, workers, pinning, prefetching) that yields its
    batches of epochs ``start_epoch .. max_epochs - 1`` in one pass; its workers exit when the pass ends or its
    iterator is dropped."""
    if isinstance(loader.dataset, IterableDataset) or loader.batch_sampler is None:
        raise TypeError('EpochStreamTrainLoop needs a map-style dataset and batch_size (or a batch_sampler); got '
                        f'{type(loader.dataset).__name__} with batch_sampler={loader.batch_sampler}')
    workers = {}
    if loader.num_workers > 0:
        workers = dict(prefetch_factor=loader.prefetch_factor, multiprocessing_context=loader.multiprocessing_context)
    return DataLoader(
        EpochTaggedDataset(loader.dataset),
        batch_sampler=EpochStreamBatchSampler(loader.batch_sampler, start_epoch, max_epochs),
        num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
        timeout=loader.timeout, worker_init_fn=loader.worker_init_fn, generator=loader.generator,
        pin_memory_device=loader.pin_memory_device, in_order=loader.in_order, **workers)


@LOOPS.register_module()
class EpochStreamTrainLoop(EpochBasedTrainLoop):
    """``EpochBasedTrainLoop`` whose data loading runs on across epochs (see the module docstring).

    Same arguments as ``EpochBasedTrainLoop``. ``runner.train_dataloader`` stays the configured DataLoader (hooks
    read its length, dataset and sampler) but is never iterated; the stream is built from it when the first epoch
    of this run starts (``runner.epoch``, so after ``--resume`` too) and closed when training ends or stops early.
    Validation uses its own DataLoader; the stream's workers keep prefetching meanwhile.
    """

    workers_span_epochs = True  # read by EpochSeedHook: samples must be seeded by (seed, epoch, index)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._stream: Optional[Iterator] = None

    def run(self) -> torch.nn.Module:
        try:
            return super().run()
        finally:
            self._stream = None  # the last reference: its workers shut down now

    def run_epoch(self) -> None:
        """Iterate one epoch: ``len(self.dataloader)`` batches taken from the stream."""
        self.runner.call_hook('before_train_epoch')
        self.runner.model.train()
        if self._stream is None:
            self._stream = self._open_stream()
        for idx in range(len(self.dataloader)):
            self.run_iter(idx, next(self._stream))
        self.runner.call_hook('after_train_epoch')
        self._epoch += 1

    def _open_stream(self) -> Iterator[Sequence]:
        """The stream's iterator, from this epoch to the last; it draws nothing from the global generators (its
        workers' base seed comes from a forked one), so a resumed run's training draws match."""
        dataset = self.dataloader.dataset
        if self.dataloader.num_workers > 0 and not isinstance(getattr(dataset, 'pipeline', None),
                                                                   SampleSeededPipeline):
            print_log(f'EpochStreamTrainLoop: the samples of {type(dataset).__name__} are not seeded by (seed, epoch, '
                      'index) (EpochSeedHook with seed_samples=True on an MMEngine BaseDataset does it); their '
                      'augmentations depend on the worker that loads them, so a resumed run loads other data',
                      logger='current', level=logging.WARNING)
        loader = epoch_stream_dataloader(self.dataloader, self._epoch, self._max_epochs)
        with torch.random.fork_rng(devices=[]):
            return iter(loader)
