"""``EpochSeedHook``: make every training epoch's randomness a function of (seed, epoch, rank) alone.

MMEngine checkpoints hold no RNG state, and the validation between two epochs draws from the global generator
(each DataLoader iterator takes its base seed from it). So a run resumed at an epoch boundary would draw other
dropout masks, drop-path decisions and main-process augmentations than the uninterrupted run did. Re-seeding
Python, NumPy and torch (every device) at the start of each epoch from ``(seed, epoch, rank)`` makes the two runs
draw the same numbers, whatever ran before the epoch. Different epochs and ranks get different, fixed seeds.
"""
import hashlib
import random
from typing import Optional

import numpy as np
import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook

from opentad_lora.registry import HOOKS


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """A 32-bit seed derived from ``(seed, epoch, rank)`` by hashing (neighbouring inputs give unrelated seeds)."""
    digest = hashlib.sha256(f'{seed}/{epoch}/{rank}'.encode()).digest()
    return int.from_bytes(digest[:4], 'little')


@HOOKS.register_module()
class EpochSeedHook(Hook):
    """Re-seed ``random``, ``numpy`` and ``torch`` before every training epoch (see the module docstring).

    Args:
        seed: The base seed; None uses the Runner's (``randomness=dict(seed=...)``, or the one it drew).
    """

    priority = 'VERY_HIGH'  # before any other hook of the epoch draws a random number

    def __init__(self, seed: Optional[int] = None) -> None:
        self.seed = seed

    def before_train_epoch(self, runner) -> None:
        base = self.seed if self.seed is not None else runner.seed
        value = epoch_seed(int(base), runner.epoch, get_rank())
        random.seed(value)
        np.random.seed(value)
        torch.manual_seed(value)  # every device's generator
