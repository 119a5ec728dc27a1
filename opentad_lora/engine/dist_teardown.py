"""End a distributed run so the process exits cleanly: destroy the process group, then let gloo's workers go idle.

Why the second step: a gloo worker thread keeps the collective it ran (and the tensors in it) for a moment after the
caller's ``wait()`` has returned. If the interpreter starts finalizing in that moment, the worker's release of a
tensor that Python still owns needs the GIL, CPython ends the thread there, and the C++ unwinding aborts the process
("terminate called without an active exception", SIGABRT; pytorch/pytorch#190489). ``destroy_process_group`` joins
those threads only when it holds the last reference to the group, and an FSDP model keeps references of its own to
the end of the process. So :func:`release_process_group` also waits, sleeping with the GIL released, until every
gloo worker of this process is blocked and has not run since the last look, that is, it waits for the next job.
This has aborted finished ``torchrun`` FSDP runs on a loaded 2-core CI machine.
"""
import time
from pathlib import Path
from typing import Dict, Iterable, Tuple

import torch.distributed as torch_dist

GLOO_WORKER_NAMES = ('pt_gloo_runloop',)
POLL_SECONDS = 0.005


def _thread_activity(names: Iterable[str]) -> Dict[str, Tuple[str, int, int]]:
    """``{thread id: (state letter, voluntary switches, involuntary switches)}`` of this process's threads whose
    OS-level name is in ``names``, from ``/proc/self/task`` (empty where there is no ``/proc``)."""
    names = set(names)
    activity = {}
    for task in Path('/proc/self/task').glob('*'):
        try:
            fields = dict(line.split(':', 1) for line in (task / 'status').read_text().splitlines() if ':' in line)
        except OSError:  # the thread ended while we looked
            continue
        if fields.get('Name', '').strip() in names:
            activity[task.name] = (fields['State'].strip()[:1], int(fields['voluntary_ctxt_switches']),
                                   int(fields['nonvoluntary_ctxt_switches']))
    return activity


def wait_for_idle_threads(names: Iterable[str] = GLOO_WORKER_NAMES, timeout: float = 5.0) -> bool:
    """Sleep until every thread named in ``names`` is sleeping and has not been scheduled between two looks.

    Returns ``False`` if some thread was still busy after ``timeout`` seconds. A thread waiting for the GIL cannot
    pass: the GIL is free while this function sleeps, so such a thread runs and its switch counts change.
    """
    deadline = time.monotonic() + timeout
    before = _thread_activity(names)
    while True:
        time.sleep(POLL_SECONDS)
        now = _thread_activity(names)
        if all(activity[0] == 'S' and before.get(tid) == activity for tid, activity in now.items()):
            return True
        if time.monotonic() > deadline:
            return False
        before = now


def release_process_group() -> bool:
    """Destroy the default process group after a finished run, if there is one, and wait for gloo's workers to go
    idle (see the module docstring); returns whether there was a group."""
    if not (torch_dist.is_available() and torch_dist.is_initialized()):
        return False
    torch_dist.destroy_process_group()
    wait_for_idle_threads()
    return True
