"""Shared pytest fixtures: every test starts seeded and with MMEngine's global singletons cleared."""
import random

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_clean_mmengine():
    """Seed all RNGs before a test; clear MMEngine's process-wide singletons after it (as RunnerTestCase does)."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
    try:
        from mmengine.logging import MessageHub, MMLogger
        from mmengine.registry import DefaultScope
        from mmengine.visualization import Visualizer
    except ImportError:  # pragma: no cover - mmengine is a runtime requirement
        return
    for manager in (MMLogger, Visualizer, DefaultScope, MessageHub):
        manager._instance_dict.clear()
