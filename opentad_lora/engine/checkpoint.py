"""Safe checkpoint loading and atomic checkpoint writing for MMEngine 0.10.7 on torch >= 2.6.

Loading: MMEngine 0.10.7 calls ``torch.load`` without ``weights_only``; since torch 2.6 that means
``weights_only=True``, which rejects the ``HistoryBuffer`` and numpy objects every Runner checkpoint holds, so resume
breaks. :func:`load_checkpoint_file` loads with ``weights_only=True`` inside ``torch.serialization.safe_globals``
and an allowlist of *data* types only (:data:`MM_SAFE_GLOBALS`); anything else is refused before it can run, with an
error naming the file and the offending globals. :func:`register_safe_checkpoint_loader` makes it MMEngine's loader
for local paths, so ``Runner.resume``/``load_checkpoint``, ``PretrainedInit`` and ``CheckpointHook`` all use it.

Writing: :func:`atomic_open` writes through a temporary file in the same folder, fsyncs it and renames it over the
target, so a crash mid-save leaves the previous file intact. :func:`enable_atomic_checkpoint_writes` routes MMEngine's
checkpoint files (``LocalBackend.put``) and ``CheckpointHook``'s ``last_checkpoint`` through it.

Both are installed when :mod:`opentad_lora.engine` is imported (the registry ``locations`` import it whenever a
Runner builds a hook, optimizer constructor or model of ours).
"""
import _compat_pickle
import builtins
import logging
import os
import pickletools
import zipfile
from typing import Any, Dict, List

import numpy as np
import torch
from mmengine.config import ConfigDict
from mmengine.fileio.backends import LocalBackend, register_backend
from mmengine.logging import HistoryBuffer, print_log
from mmengine.runner import CheckpointLoader

from ..fileio import PathLike, atomic_open

TRUST_ENV = 'OPENTAD_LORA_TRUST_CHECKPOINTS'
_HISTORY_BUFFER_METHODS = ('min', 'max', 'current', 'mean')



class CheckpointError(RuntimeError):
    """A checkpoint file cannot be read (missing data, corrupt or truncated)."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint file references globals outside the allowlist; it was not unpickled."""


def _history_buffer_getattr(obj: Any, name: str) -> Any:
    """``builtins.getattr`` as a checkpoint may call it: only to fetch HistoryBuffer's statistics methods.

    ``HistoryBuffer.__getstate__`` pickles its ``min/max/current/mean`` methods, which pickle stores as
    ``getattr(HistoryBuffer, 'min')``. Allowlisting the real ``getattr`` would let a file fetch any attribute.
    """
    if obj is HistoryBuffer and name in _HISTORY_BUFFER_METHODS:
        return getattr(obj, name)
    raise UnsafeCheckpointError(f'it calls getattr({obj!r}, {name!r}), which is outside the allowlist')


def _numpy_safe_globals() -> List[Any]:
    """numpy's array/scalar reconstructors and dtype classes, under both numpy 1 and numpy 2 module paths."""
    if int(np.__version__.split('.')[0]) >= 2:
        from numpy._core import multiarray
    else:  # numpy 1: ``numpy._core`` does not exist before 1.26
        from numpy.core import multiarray
    entries: List[Any] = [np.ndarray, np.dtype]
    for name in ('_reconstruct', 'scalar'):
        for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):  # files written by numpy 1 or 2
            entries.append((getattr(multiarray, name), f'{module}.{name}'))
    # Unpickling a dtype BUILDs an instance of its concrete class (numpy.dtypes.Float64DType, ...), which must be
    # allowlisted too. Object arrays are left out: they are the one dtype that carries arbitrary Python objects.
    entries += sorted({type(np.dtype(code)) for code in np.typecodes['All'] if code != 'O'}, key=str)
    return entries


MM_SAFE_GLOBALS: List[Any] = [
    HistoryBuffer,
    (_history_buffer_getattr, 'builtins.getattr'),
    ConfigDict,  # ``meta.dataset_meta`` holds ConfigDicts when a dataset's metainfo came from a config
    *_numpy_safe_globals(),
]
"""Globals an MMEngine Runner checkpoint contains besides tensors and builtins (checked on checkpoints written by
mmengine 0.10.7 with torch 2.13 / numpy 2.4). Only data types and their reconstructors: nothing that runs code."""


def _py3_name(module: str, name: str) -> str:
    """``module.name`` with Python 2 names mapped as the unpickler maps them (``__builtin__`` -> ``builtins``)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    return f'{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{name}'


def _globals_of_pickle_stream(path: str) -> List[str]:
    """Globals referenced by the pickles at the start of a non-zip (legacy or raw pickle) file, found by
    disassembling only (nothing is unpickled)."""
    found: List[str] = []
    with open(path, 'rb') as handle:
        for _ in range(4):  # legacy torch files: magic number, protocol, sys info, then the object
            strings: List[str] = []
            try:
                for opcode, arg, _pos in pickletools.genops(handle):
                    if opcode.name == 'GLOBAL':
                        found.append(_py3_name(*arg.split(' ', 1)))
                    elif opcode.name == 'STACK_GLOBAL' and len(strings) >= 2:
                        found.append(_py3_name(strings[-2], strings[-1]))
                    elif isinstance(arg, str):
                        strings.append(arg)
            except Exception:  # the raw storage bytes after the last pickle, or a corrupt stream
                break
    return sorted(set(found))


def _unsafe_globals(path: str) -> List[str]:
    """Globals in ``path`` outside torch's and our allowlists (call inside the ``safe_globals`` context)."""
    from torch._weights_only_unpickler import _get_allowed_globals, _get_user_allowed_globals

    try:
        if zipfile.is_zipfile(path):
            return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        allowed = set(_get_allowed_globals()) | set(_get_user_allowed_globals())
        return [name for name in _globals_of_pickle_stream(path) if name not in allowed]
    except Exception:  # corrupt file: the caller reports it as unreadable
        return []


def _trusted_by_env() -> bool:
    return os.environ.get(TRUST_ENV, '') == '1'


def load_checkpoint_file(path: PathLike, map_location: Any = 'cpu') -> Dict[str, Any]:
    """Load a ``torch.save`` file with ``weights_only=True`` and the MMEngine allowlist.

    Args:
        path: Local checkpoint file.
        map_location: As for ``torch.load``.

    Returns:
        The loaded object (a dict for every checkpoint MMEngine or a ``state_dict()`` writes).

    Raises:
        FileNotFoundError: ``path`` is not a file.
        UnsafeCheckpointError: the file references globals outside :data:`MM_SAFE_GLOBALS`; they are listed and
            nothing was executed. For a *trusted* legacy file set ``OPENTAD_LORA_TRUST_CHECKPOINTS=1``, which
            loads such files with full unpickling (and logs a warning).
        CheckpointError: the file is corrupt or truncated.
    """
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f'Checkpoint {path} does not exist.')
    with torch.serialization.safe_globals(MM_SAFE_GLOBALS):
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except UnsafeCheckpointError as err:
            raise UnsafeCheckpointError(f'Refusing to load checkpoint {path}: {err}. Nothing was executed.') from None
        except Exception as err:
            error = err
            unsafe = _unsafe_globals(path)
    if not unsafe:
        raise CheckpointError(f'Checkpoint {path} cannot be read; is it corrupt or truncated? '
                              f'({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ""})') \
            from None
    if _trusted_by_env():
        print_log(f'{TRUST_ENV}=1: loading {path} with full unpickling although it references {unsafe}.',
                  logger='current', level=logging.WARNING)
        return torch.load(path, map_location=map_location, weights_only=False)
    raise UnsafeCheckpointError(
        f'Refusing to load checkpoint {path}: it references globals outside the weights_only allowlist: {unsafe}. '
        f'Nothing was executed. If the file is yours and trusted, set {TRUST_ENV}=1 to load it anyway.') from None


def load_from_local_safe(filename: str, map_location: Any = None) -> Dict[str, Any]:
    """MMEngine ``CheckpointLoader`` scheme for local paths (the name after ``load_from_`` is what it logs)."""
    return load_checkpoint_file(filename, map_location=map_location)


def register_safe_checkpoint_loader() -> None:
    """Make :func:`load_from_local_safe` MMEngine's loader for local paths (replaces ``load_from_local``)."""
    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local_safe, force=True)


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    """``torch.save(obj, path)`` through :func:`atomic_open`: a crash mid-save leaves the previous file intact."""
    with atomic_open(path, 'wb') as handle:
        torch.save(obj, handle)


class AtomicLocalBackend(LocalBackend):
    """MMEngine's local file backend with atomic ``put``/``put_text`` (checkpoints, dumped files)."""

    def put(self, obj: bytes, filepath: PathLike) -> None:
        with atomic_open(filepath, 'wb') as handle:
            handle.write(obj)

    def put_text(self, obj: str, filepath: PathLike, encoding: str = 'utf-8') -> None:
        with atomic_open(filepath, 'w', encoding=encoding) as handle:
            handle.write(obj)


def _checkpoint_hook_open(file: PathLike, mode: str = 'r', *args: Any, **kwargs: Any) -> Any:
    """``open`` as mmengine's ``checkpoint_hook`` module sees it: its one write, ``last_checkpoint``, is atomic."""
    if mode in ('w', 'wb'):
        return atomic_open(file, mode, encoding=kwargs.get('encoding'))
    return builtins.open(file, mode, *args, **kwargs)


def enable_atomic_checkpoint_writes() -> None:
    """Route MMEngine's checkpoint writes through :func:`atomic_open`.

    ``Runner.save_checkpoint`` serialises to bytes and calls ``get_file_backend(path).put`` (``LocalBackend`` for
    local paths), so the local backend is re-registered as :class:`AtomicLocalBackend`. ``CheckpointHook`` writes
    ``work_dir/last_checkpoint`` with a plain ``open``; that module-level name is pointed at an atomic writer.
    """
    import mmengine.fileio.io as fileio_io
    import mmengine.hooks.checkpoint_hook as checkpoint_hook

    register_backend('local', AtomicLocalBackend, prefixes='', force=True)
    for key in [k for k in fileio_io.backend_instances if k.startswith(':')]:  # cached plain local backends
        fileio_io.backend_instances.pop(key)
    checkpoint_hook.open = _checkpoint_hook_open

