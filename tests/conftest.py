"""Shared pytest fixtures: every test starts seeded and with MMEngine's global singletons cleared."""
import os
import random

import numpy as np
import pytest
import torch

# Triton kernels (the LoRA dropout kernels) run on CPU through Triton's interpreter. Triton decides whether to
# interpret when its own functions are decorated, at its import: set before anything imports it. Only the tests that
# ask for the kernels (OPENTAD_LORA_DROPOUT_KERNEL=interpret) send CPU tensors to them.
if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')


@pytest.fixture(autouse=True)
def _seed_and_clean_mmengine():
    """Seed all RNGs and use one torch thread in a test; clear MMEngine's process-wide singletons after it (as
    RunnerTestCase does). Test tensors are tiny: a second intra-op thread costs more than it gives."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    try:
        from mmengine.logging import MessageHub, MMLogger
        from mmengine.registry import DefaultScope
        from mmengine.visualization import Visualizer
    except ImportError:  # pragma: no cover - mmengine is a runtime requirement
        return
    for manager in (MMLogger, Visualizer, DefaultScope, MessageHub):
        manager._instance_dict.clear()
