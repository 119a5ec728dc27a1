"""Activation checkpointing helpers (``with_cp``), always non-reentrant.

Non-reentrant ``torch.utils.checkpoint`` works when the block input does not require grad (a frozen patch
embedding under LoRA), supports keyword arguments, and restores the RNG state on recomputation so dropout and drop
path give identical outputs and gradients with and without checkpointing.
"""
from typing import Any, Callable, Iterable, Optional

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .compressed_checkpoint import compressed_checkpoint


def checkpoint_call(function: Callable[..., Any], *args: Any, enabled: bool = True, storage: Optional[str] = None,
                    **kwargs: Any) -> Any:
    """``function(*args, **kwargs)``, recomputed in backward when ``enabled`` and autograd is recording.

    ``storage='bf16'|'fp8'`` keeps the first argument compressed for the recomputation (see
    :mod:`.compressed_checkpoint`); None keeps it exact.
    """
    if enabled and torch.is_grad_enabled():
        if storage is not None:
            return compressed_checkpoint(lambda x, *rest: function(x, *rest, **kwargs), *args, storage=storage)
        return checkpoint(function, *args, use_reentrant=False, **kwargs)
    return function(*args, **kwargs)


def checkpoint_seq(blocks: Iterable[nn.Module], x: Tensor, enabled: bool = True, every: int = 1) -> Tensor:
    """Run ``x`` through ``blocks`` in order, checkpointing each chunk of ``every`` consecutive blocks.

    Args:
        blocks: Modules taking and returning one tensor.
        x: Input of the first block.
        enabled: Plain sequential forward when False.
        every: Blocks per checkpointed segment (larger saves more memory, recomputes more).
    """
    blocks = list(blocks)
    if every < 1:
        raise ValueError(f'every must be >= 1, got {every}.')

    def run_chunk(chunk: list) -> Callable[[Tensor], Tensor]:
        def forward(inp: Tensor) -> Tensor:
            for block in chunk:
                inp = block(inp)
            return inp
        return forward

    for start in range(0, len(blocks), every):
        x = checkpoint_call(run_chunk(blocks[start:start + every]), x, enabled=enabled)
    return x
