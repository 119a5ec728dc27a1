"""Atomic file writes shared by the PEFT core (adapter files) and the engine (checkpoints).

Standard library only, so every layer of the package can use it.
"""
import os
from contextlib import contextmanager, suppress
from typing import IO, Iterator, Optional, Union
from uuid import uuid4

PathLike = Union[str, 'os.PathLike[str]']


def _fsync_dir(directory: str) -> None:
    """Persist a rename: fsync the folder (a no-op where folders cannot be opened, e.g. Windows)."""
    with suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextmanager
def atomic_open(path: PathLike, mode: str = 'wb', encoding: Optional[str] = None) -> Iterator[IO]:
    """Open ``path`` for writing so that it appears complete or not at all.

    Writes go to a temporary file in the same folder; on success it is flushed, fsynced and renamed over ``path``
    (``os.replace`` is atomic on POSIX and Windows). On an exception the temporary file is removed and ``path`` is
    untouched. A process killed mid-write may leave a ``.<name>.<pid>.<id>.tmp`` file behind, never a partial
    ``path``.

    Args:
        path: Destination file; its folder is created if needed.
        mode: ``'wb'`` or ``'w'``.
        encoding: Text encoding for ``'w'``.
    """
    if mode not in ('w', 'wb'):
        raise ValueError(f'atomic_open only writes ("w" or "wb"), got mode={mode!r}.')
    path = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f'.{os.path.basename(path)}.{os.getpid()}.{uuid4().hex[:8]}.tmp')
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666 & ~umask, like open()
    try:
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)
