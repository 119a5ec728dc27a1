"""``EpochSeedHook``: make every training epoch's randomness a function of (seed, epoch, rank) alone.

MMEngine checkpoints hold no RNG state, and the validation between two epochs draws from the global generator
(each DataLoader iterator takes its base seed from it). So a run resumed at an epoch boundary would draw other
dropout masks, drop-path decisions and main-process augmentations than the uninterrupted run did. Re-seeding
Python, NumPy and torch (every device) at the start of each epoch from ``(seed, epoch, rank)`` makes the two runs
draw the same numbers, whatever ran before the epoch. Different epochs and ranks get different, fixed seeds.

DataLoader workers draw the data augmentation. Fresh workers (``persistent_workers=False``) are re-seeded by
MMEngine identically at each epoch, so they need nothing more; persistent workers keep their generators across
epochs, and so do the workers of a loop that loads across epochs (``EpochStreamTrainLoop``), so for them the hook
also seeds every sample from ``(seed, epoch, index)`` (:mod:`.sample_seed`).
"""
import logging
import random
from typing import Optional

import numpy as np
import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.logging import print_log

from opentad_lora.registry import HOOKS

from .sample_seed import derive_seed, seed_samples_by_epoch


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """A 32-bit seed derived from ``(seed, epoch, rank)`` by hashing (neighbouring inputs give unrelated seeds)."""
    return derive_seed(seed, epoch, rank)


@HOOKS.register_module()
class EpochSeedHook(Hook):
    """Re-seed ``random``, ``numpy`` and ``torch`` before every training epoch (see the module docstring).

    Args:
        seed: The base seed; None uses the Runner's (``randomness=dict(seed=...)``, or the one it drew).
        seed_samples: With DataLoader workers that live across epochs (``persistent_workers=True``, or a train loop
            with ``workers_span_epochs``), seed each training sample's pipeline from ``(seed, epoch, sample
            index)`` (False: leave the workers' generators alone; resume is then not exact).
    """

    priority = 'VERY_HIGH'  # before any other hook of the epoch draws a random number

    def __init__(self, seed: Optional[int] = None, seed_samples: bool = True) -> None:
        self.seed = seed
        self.seed_samples = seed_samples
        self._sample_epoch = None

    def before_train(self, runner) -> None:
        """Wrap the training pipeline before the first epoch starts the workers (they keep it from then on)."""
        loader = runner.train_dataloader
        span_epochs = loader.persistent_workers or getattr(runner.train_loop, 'workers_span_epochs', False)
        if not (self.seed_samples and loader.num_workers > 0 and span_epochs):
            return
        self._sample_epoch = seed_samples_by_epoch(loader.dataset, int(self._base_seed(runner)))
        if self._sample_epoch is None:
            print_log(f'EpochSeedHook: {type(loader.dataset).__name__} is not an MMEngine BaseDataset, so its '
                      'samples are not seeded by epoch; with workers that live across epochs (persistent_workers=True '
                      'or EpochStreamTrainLoop) a resumed run draws other augmentations than an uninterrupted one '
                      '(EpochBasedTrainLoop with persistent_workers=False resumes exactly)',
                      logger='current', level=logging.WARNING)

    def _base_seed(self, runner) -> int:
        return self.seed if self.seed is not None else runner.seed

    def before_train_epoch(self, runner) -> None:
        if self._sample_epoch is not None:
            self._sample_epoch.value = runner.epoch  # read by the workers for this epoch's samples
        value = epoch_seed(int(self._base_seed(runner)), runner.epoch, get_rank())
        random.seed(value)
        np.random.seed(value)
        torch.manual_seed(value)  # every device's generator
