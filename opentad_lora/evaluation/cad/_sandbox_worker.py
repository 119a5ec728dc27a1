"""Sandbox server for generated CadQuery code; started by ``sandbox.CodeSandbox`` as ``python -I <this file>``.

It imports the mesher once (CadQuery takes seconds to import), then for every request forks a worker that:
puts itself in its own process group, sets resource limits (address space, CPU seconds, file size, no core dumps),
moves to a fresh temporary folder, installs an audit hook that refuses sockets, subprocesses, signals, ``ctypes``
and every write, removal or rename outside that folder, runs the program and turns its ``r`` into a triangle mesh.
The server kills the worker's process group at the deadline. Replies are a JSON header line plus raw float64/int64
arrays, never pickles, so the parent does not execute anything the worker sends.

This file imports nothing from opentad_lora: it runs in an isolated interpreter (``-I``).
"""
import argparse
import builtins
import importlib
import json
import math
import os
import resource
import select
import shutil
import signal
import sys
import tempfile
import time

MAX_ELEMENTS = 5_000_000  # vertices or faces accepted from one program
_PATH_EVENTS = {'os.remove', 'os.rmdir', 'os.rename', 'os.mkdir', 'os.link', 'os.symlink', 'os.chmod', 'os.chown',
                'os.truncate', 'os.utime', 'os.chflags', 'os.setxattr', 'os.removexattr', 'shutil.rmtree',
                'shutil.move', 'shutil.copyfile', 'shutil.copytree', 'shutil.make_archive', 'shutil.unpack_archive'}
_REFUSED_PREFIXES = ('socket.', 'subprocess.', 'os.exec', 'os.spawn', 'os.posix_spawn', 'os.fork', 'os.forkpty',
                     'os.system', 'os.kill', 'os.killpg', 'os.chdir', 'os.fchdir', 'os.chroot', 'os.putenv',
                     'os.unsetenv', 'os.startfile', 'pty.spawn', 'ctypes.', 'resource.setrlimit', 'resource.prlimit',
                     'signal.pthread_kill', 'sys.addaudithook', 'sys.remote_exec', 'urllib.', 'http.', 'ftplib.',
                     'smtplib.', 'poplib.', 'imaplib.', 'nntplib.', 'telnetlib.', 'webbrowser.', 'mmap.')
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


class AuditPolicy:
    """The audit hook of a worker: refuses dangerous events and records every refusal."""

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)
        self.refused = []
        self._busy = False

    def _inside(self, path) -> bool:
        if isinstance(path, int):
            return True  # an already open descriptor
        path = os.fsdecode(os.fspath(path))
        full = os.path.realpath(os.path.join(self.root, path))
        return full == self.root or full.startswith(self.root + os.sep)

    def _allowed(self, event: str, args: tuple) -> bool:
        if event.startswith(_REFUSED_PREFIXES):
            return False
        if event == 'open':
            path, mode, flags = (tuple(args) + (None, None))[:3]
            writes = (isinstance(mode, str) and any(c in mode for c in 'wax+')) or \
                (isinstance(flags, int) and flags & _WRITE_FLAGS)
            return not writes or path is None or self._inside(path)
        if event in _PATH_EVENTS:
            paths = [a for a in args if isinstance(a, (str, bytes, os.PathLike))]
            dir_fds = [a for a in args[1:] if isinstance(a, int) and not isinstance(a, bool) and a >= 0]
            return not dir_fds and all(self._inside(p) for p in paths)
        return True

    def __call__(self, event: str, args: tuple) -> None:
        if self._busy:
            return
        self._busy = True
        try:
            allowed = self._allowed(event, args)
        finally:
            self._busy = False
        if not allowed:
            self.refused.append(f'{event}{tuple(repr(a)[:80] for a in args)}')
            raise PermissionError(f'sandbox refused {event}')


def cadquery_mesher(namespace: dict, tolerance: float = 0.001, angular_tolerance: float = 0.1):
    """CAD-Recode's tessellation: ``r.val().tessellate(0.001, 0.1)`` of the program's final solid ``r``."""
    import numpy as np

    shape = _result(namespace)
    shape = shape.val() if hasattr(shape, 'val') else shape
    vertices, triangles = shape.tessellate(tolerance, angular_tolerance)
    return np.array([(v.x, v.y, v.z) for v in vertices], dtype=np.float64).reshape(-1, 3), \
        np.array(triangles, dtype=np.int64).reshape(-1, 3)


def arrays_mesher(namespace: dict):
    """``r`` is ``(vertices, faces)`` or has ``.vertices`` and ``.faces`` (e.g. a ``trimesh.Trimesh``)."""
    import numpy as np

    shape = _result(namespace)
    vertices, faces = (shape.vertices, shape.faces) if hasattr(shape, 'faces') else shape
    return np.asarray(vertices, dtype=np.float64).reshape(-1, 3), np.asarray(faces, dtype=np.int64).reshape(-1, 3)


def _result(namespace: dict):
    if 'r' not in namespace:
        raise NameError('the program defines no result variable r')
    return namespace['r']


BUILTIN_MESHERS = {'cadquery': (('cadquery',), cadquery_mesher), 'arrays': ((), arrays_mesher)}


def load_mesher(spec: str):
    """A built-in mesher name or ``'package.module:function'``; its imports happen here, before any fork."""
    import numpy  # noqa: F401  (every mesher returns numpy arrays)

    if spec in BUILTIN_MESHERS:
        modules, fn = BUILTIN_MESHERS[spec]
        for module in modules:
            importlib.import_module(module)
        return fn
    module, _, name = spec.partition(':')
    return getattr(importlib.import_module(module), name)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _set_limits(timeout: float, memory_mb: int, file_mb: int) -> None:
    with open('/proc/self/statm') as handle:
        current = int(handle.read().split()[0]) * resource.getpagesize()
    limits = {resource.RLIMIT_AS: current + memory_mb * 2 ** 20, resource.RLIMIT_FSIZE: file_mb * 2 ** 20,
              resource.RLIMIT_CPU: math.ceil(timeout) + 1, resource.RLIMIT_CORE: 0}
    for kind, value in limits.items():
        hard = resource.getrlimit(kind)[1]
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(kind, (value, hard))


def run_worker(request: dict, mesher, root: str, out_fd: int) -> None:
    """In the forked child: limit, confine, execute, mesh, reply on ``out_fd``. Never returns."""
    status, error, payload, sizes = 'error', '', b'', (0, 0)
    policy = AuditPolicy(root)
    try:
        os.setpgid(0, 0)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.chdir(root)
        tempfile.tempdir = root
        sys.dont_write_bytecode = True
        _set_limits(request['timeout'], request['memory_mb'], request['file_mb'])
        sys.addaudithook(policy)
        namespace = {'__name__': '__cad_program__', '__builtins__': builtins}
        exec(compile(request['code'], '<generated>', 'exec'), namespace)
        vertices, faces = mesher(namespace, **request.get('mesher_kwargs', {}))
        if len(vertices) > MAX_ELEMENTS or len(faces) > MAX_ELEMENTS:
            status, error = 'invalid_shape', f'mesh too large ({len(vertices)} vertices, {len(faces)} faces)'
        else:
            status, sizes = 'ok', (len(vertices), len(faces))
            payload = vertices.astype('<f8').tobytes() + faces.astype('<i8').tobytes()
    except MemoryError:
        status, error = 'memory', 'MemoryError (address-space limit reached)'
    except BaseException as err:  # the generated program may raise anything, SystemExit included
        status, error = 'error', f'{type(err).__name__}: {err}'[:1000]
    if policy.refused:
        status, error, payload, sizes = 'forbidden', 'refused: ' + '; '.join(policy.refused)[:1000], b'', (0, 0)
    header = json.dumps(dict(status=status, error=error, nv=sizes[0], nf=sizes[1])).encode() + b'\n'
    try:
        _write_all(out_fd, header + payload)
    finally:
        os._exit(0)


def serve_one(request: dict, mesher, root: str) -> bytes:
    """Fork a worker for one request, wait for its reply until the deadline, kill it after; return the reply."""
    workdir = tempfile.mkdtemp(prefix='job_', dir=root)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        run_worker(request, mesher, workdir, write_fd)
    os.close(write_fd)
    chunks, deadline, timed_out = [], time.monotonic() + request['timeout'], False
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            timed_out = True
            break
        if select.select([read_fd], [], [], remaining)[0]:
            data = os.read(read_fd, 1 << 20)
            if not data:
                break
            chunks.append(data)
    for kill in (os.killpg, os.kill):  # the worker's group (anything it started), then the worker itself
        try:
            kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    _, wait_status = os.waitpid(pid, 0)
    os.close(read_fd)
    shutil.rmtree(workdir, ignore_errors=True)
    reply = b''.join(chunks)
    if timed_out:
        return _header('timeout', f'no result within {request["timeout"]} s')
    if b'\n' not in reply:
        sig = os.WTERMSIG(wait_status) if os.WIFSIGNALED(wait_status) else None
        if sig == signal.SIGXCPU:
            return _header('timeout', 'CPU-time limit reached')
        code = os.waitstatus_to_exitcode(wait_status)
        return _header('crash', f'worker died without a reply (signal {sig}, exit code {code})')
    return reply


def _header(status: str, error: str) -> bytes:
    return json.dumps(dict(status=status, error=error, nv=0, nf=0)).encode() + b'\n'


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('--mesher', default='cadquery')
    parser.add_argument('--root', required=True)
    parser.add_argument('--sys-path', default='[]', help='JSON list of entries appended to sys.path')
    args = parser.parse_args()
    sys.path.extend(json.loads(args.sys_path))
    out_fd = os.dup(1)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # imported libraries must not write into the reply stream
    try:
        mesher = load_mesher(args.mesher)
    except BaseException as err:  # report any import failure to the parent, then stop
        _write_all(out_fd, _header('error', f'cannot load mesher {args.mesher!r}: {type(err).__name__}: {err}'))
        return
    _write_all(out_fd, _header('ready', ''))
    for line in sys.stdin.buffer:
        _write_all(out_fd, serve_one(json.loads(line), mesher, args.root))


if __name__ == '__main__':
    main()
