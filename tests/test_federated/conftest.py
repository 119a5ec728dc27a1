"""Fixtures of the CLIP tests: one torch thread (tiny ops are dominated by thread sync on a busy 2-core box)."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
