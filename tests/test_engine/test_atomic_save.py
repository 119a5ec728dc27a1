"""Atomic checkpoint writes: a save that dies midway leaves the previous file intact and loadable."""
import os
import stat

import pytest
import torch
from mmengine.fileio import get_file_backend
from mmengine.fileio.backends import backends

from opentad_lora.engine import AtomicLocalBackend, atomic_torch_save, load_checkpoint_file

posix_only = pytest.mark.skipif(not hasattr(os, 'fork'), reason='needs os.fork')


class _DieWhilePickled:
    """Kills the process (no cleanup, like SIGKILL or power loss) when torch.save reaches it."""

    def __reduce__(self):
        os._exit(17)


def _in_child(action) -> int:
    """Run ``action`` in a forked child and return its exit code (the child never returns to pytest)."""
    pid = os.fork()
    if pid == 0:
        try:
            action()
        finally:
            os._exit(0)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _leftovers(folder) -> list:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith('.tmp'))


def test_atomic_save_writes_a_loadable_file_with_normal_permissions(tmp_path):
    path = tmp_path / 'sub' / 'ckpt.pth'
    atomic_torch_save({'w': torch.arange(4.0)}, path)
    assert torch.equal(load_checkpoint_file(path)['w'], torch.arange(4.0))
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert _leftovers(path.parent) == []


def test_failed_save_keeps_previous_file_and_cleans_up(tmp_path):
    path = tmp_path / 'ckpt.pth'
    atomic_torch_save({'w': torch.ones(3)}, path)
    before = path.read_bytes()
    with pytest.raises(Exception):
        atomic_torch_save({'w': torch.zeros(1000), 'bad': lambda: None}, path)  # fails while serialising
    assert path.read_bytes() == before and _leftovers(tmp_path) == []


@posix_only
@pytest.mark.parametrize('atomic', [True, False], ids=['atomic', 'plain_torch_save'])
def test_process_killed_mid_save(tmp_path, atomic):
    path = tmp_path / 'ckpt.pth'
    atomic_torch_save({'w': torch.ones(3)}, path)
    before = path.read_bytes()
    save = atomic_torch_save if atomic else torch.save
    assert _in_child(lambda: save({'w': torch.zeros(3), 'x': _DieWhilePickled()}, path)) == 17
    if atomic:
        assert path.read_bytes() == before
        assert torch.equal(load_checkpoint_file(path)['w'], torch.ones(3))
    else:  # the control: a plain save truncates the previous checkpoint before dying
        assert path.read_bytes() != before


@posix_only
def test_backend_put_killed_after_writing_keeps_previous_file(tmp_path, monkeypatch):
    """MMEngine's checkpoint write (``LocalBackend.put``) dies after the bytes hit the temp file."""
    assert backends['local'] is AtomicLocalBackend
    backend = get_file_backend(str(tmp_path / 'epoch_1.pth'))
    assert isinstance(backend, AtomicLocalBackend)
    path = tmp_path / 'epoch_1.pth'
    backend.put(b'previous', path)

    def die_at_fsync(fd):
        os._exit(23)

    def write_and_die():
        monkeypatch.setattr(os, 'fsync', die_at_fsync)
        backend.put(b'new content that never lands', path)

    assert _in_child(write_and_die) == 23
    assert path.read_bytes() == b'previous'


class _Interrupt(BaseException):
    """Stands for a crash (KeyboardInterrupt, SIGTERM handler) during a Runner save."""


@pytest.mark.parametrize('victim', ['epoch_2.pth', 'last_checkpoint'])
def test_runner_save_interrupted_keeps_last_good_checkpoint(tmp_path, make_runner, monkeypatch, victim):
    """The epoch-2 save is interrupted before its rename: of the checkpoint itself, or of ``last_checkpoint``."""
    real_replace = os.replace
    epoch_2_reached = []

    def replace(src, dst):
        name = os.path.basename(dst)
        if name == 'epoch_2.pth':
            epoch_2_reached.append(name)
        if name == victim and epoch_2_reached:
            raise _Interrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, 'replace', replace)
    runner = make_runner(tmp_path, max_epochs=2)
    with pytest.raises(_Interrupt):
        runner.train()
    monkeypatch.setattr(os, 'replace', real_replace)
    assert (tmp_path / 'last_checkpoint').read_text() == str(tmp_path / 'epoch_1.pth')
    assert (tmp_path / 'epoch_2.pth').exists() == (victim == 'last_checkpoint')
    assert _leftovers(tmp_path) == []
    # Auto-resume (resume=True, no load_from) picks the last good checkpoint and finishes training.
    resumed = make_runner(tmp_path, max_epochs=2, resume=True)
    resumed.train()
    assert resumed.epoch == 2 and (tmp_path / 'last_checkpoint').read_text() == str(tmp_path / 'epoch_2.pth')
