"""Fixtures of the PEFT-core tests."""
from typing import Callable

import pytest
import torch


def _saved_bytes(fn: Callable[[], object]) -> int:
    """Bytes of the distinct storages that autograd keeps for backward while ``fn()`` builds its graph."""
    storages = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(storages.values())


@pytest.fixture
def saved_bytes() -> Callable[[Callable[[], object]], int]:
    return _saved_bytes
