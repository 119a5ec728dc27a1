"""Depth tests run torch on one thread: on the shared 2-core machine, two intra-op threads that spin-wait for
each other make these small ops tens of times slower under load."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _single_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
