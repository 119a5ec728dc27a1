"""A finished run destroys its process group and waits until gloo's worker threads are idle before the interpreter
may start finalizing (``tools/train.py``, ``tools/test.py``)."""
import ctypes
import socket
import sys
import threading
import time

import pytest
import torch
import torch.distributed as torch_dist

from opentad_lora.engine.dist_teardown import GLOO_WORKER_NAMES, _thread_activity, release_process_group, \
    wait_for_idle_threads

pytestmark = pytest.mark.skipif(not sys.platform.startswith('linux'), reason='thread states come from /proc')


def _named_thread(name: str, body) -> threading.Thread:
    """A thread whose OS-level name (what /proc shows) is ``name``."""
    def run():
        ctypes.CDLL(None).prctl(15, name.encode(), 0, 0, 0)  # PR_SET_NAME
        body()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    while not _thread_activity([name]):
        time.sleep(0.001)
    return thread


@pytest.mark.parametrize('works_by', ['spinning', 'waking_every_millisecond'])
def test_waits_while_a_named_thread_works_and_returns_once_it_waits(works_by):
    """A thread mostly asleep but woken again and again (as by a GIL hand-off) counts as busy, like a running one."""
    busy_until = time.monotonic() + 0.4
    done = threading.Event()

    def work_then_wait():
        while time.monotonic() < busy_until:
            if works_by == 'waking_every_millisecond':
                time.sleep(0.001)
        done.wait()

    _named_thread('test_busy_wrk', work_then_wait)
    start = time.monotonic()
    assert wait_for_idle_threads(['test_busy_wrk'], timeout=5.0)
    assert time.monotonic() >= busy_until, 'returned while the thread was still working'
    assert time.monotonic() - start < 3.0
    done.set()


def test_gives_up_after_the_timeout_on_a_thread_that_never_sleeps():
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            pass

    _named_thread('test_spin_wrk', spin)
    start = time.monotonic()
    assert not wait_for_idle_threads(['test_spin_wrk'], timeout=0.3)
    assert 0.3 <= time.monotonic() - start < 3.0
    stop.set()


def test_release_destroys_the_group_once_and_leaves_its_gloo_workers_idle():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    torch_dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=0, world_size=1)
    group = torch_dist.group.WORLD  # held, as an FSDP model holds it: destroying it then does not join its threads
    try:
        gathered = [None]
        torch_dist.all_gather_object(gathered, {'loss': torch.ones(3)})
        assert _thread_activity(GLOO_WORKER_NAMES), 'no gloo worker threads found by name'
        assert release_process_group() and not torch_dist.is_initialized()
        workers = _thread_activity(GLOO_WORKER_NAMES)
        assert workers and all(state == 'S' for state, *_ in workers.values())
        assert not release_process_group()
    finally:
        del group
        if torch_dist.is_initialized():
            torch_dist.destroy_process_group()
