"""Run generated CadQuery programs in a separate, limited process and get their triangle mesh back.

``CodeSandbox`` starts ``_sandbox_worker.py`` in an isolated interpreter (``python -I``, scrubbed environment, its own
process group and temporary folder). That server imports the mesher once and forks one worker per program, which
runs under a wall-clock deadline, an address-space limit (``resource.setrlimit``), a CPU-time and file-size limit,
and an audit hook (``sys.addaudithook``) refusing sockets, subprocesses, ``ctypes`` and any file write, removal or
rename outside its temporary folder. Every failure (exception, timeout, memory, refused operation, crash, bad reply,
hung server) comes back as an invalid ``ExecutionResult``; nothing raises into training or evaluation.

Audit hooks are not a security boundary against deliberately hostile code (CPython can be subverted from inside);
they contain the mistakes a code-generating model makes. Run untrusted models in a container as well.
"""
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

WORKER = Path(__file__).with_name('_sandbox_worker.py')
STATUSES = ('ok', 'error', 'timeout', 'memory', 'forbidden', 'invalid_shape', 'crash')


@dataclass
class ExecutionResult:
    """Outcome of one program: ``status`` (one of ``STATUSES``), the mesh when ``status == 'ok'``, an error text."""

    status: str
    vertices: Optional[np.ndarray] = None
    faces: Optional[np.ndarray] = None
    error: str = ''

    @property
    def valid(self) -> bool:
        return self.status == 'ok'


class CodeSandbox:
    """A reusable sandbox server; use as a context manager or call ``close()``.

    Args:
        mesher: ``'cadquery'`` (CAD-Recode: ``r.val().tessellate(tolerance, angular_tolerance)``), ``'arrays'``
            (``r`` is ``(vertices, faces)`` or has ``.vertices``/``.faces``, e.g. a ``trimesh.Trimesh``) or
            ``'package.module:function'`` taking the program's namespace and returning ``(vertices, faces)``.
        timeout: Wall-clock seconds for one program, execution and tessellation together (CAD-Recode uses 3).
        memory_mb: Address space the program may add on top of the server's (``RLIMIT_AS``).
        file_mb: Largest file the program may write inside its temporary folder (``RLIMIT_FSIZE``).
        min_faces: Fewer triangles than this make the shape invalid (cadrille: more than 2).
        startup_timeout: Seconds allowed for the server to import the mesher (CadQuery takes a few).
        mesher_kwargs: Keyword arguments of the mesher, e.g. ``dict(tolerance=0.001, angular_tolerance=0.1)``.
    """

    def __init__(self, mesher: str = 'cadquery', timeout: float = 3.0, memory_mb: int = 2048, file_mb: int = 16,
                 min_faces: int = 3, startup_timeout: float = 120.0,
                 mesher_kwargs: Optional[Dict[str, Any]] = None) -> None:
        self.mesher, self.timeout, self.memory_mb, self.file_mb = mesher, float(timeout), int(memory_mb), int(file_mb)
        self.min_faces, self.startup_timeout = int(min_faces), float(startup_timeout)
        self.mesher_kwargs = dict(mesher_kwargs or {})
        self._proc: Optional[subprocess.Popen] = None
        self._root: Optional[str] = None
        self._buffer = b''

    # -- server lifecycle ------------------------------------------------------------------------------------------
    def _start(self) -> None:
        self._root = tempfile.mkdtemp(prefix='cad_sandbox_')
        env = {'PATH': os.defpath, 'HOME': self._root, 'TMPDIR': self._root, 'LANG': 'C.UTF-8',
               'PYTHONDONTWRITEBYTECODE': '1', 'OMP_NUM_THREADS': '1', 'OPENBLAS_NUM_THREADS': '1',
               'MKL_NUM_THREADS': '1'}
        cmd = [sys.executable, '-I', str(WORKER), '--mesher', self.mesher, '--root', self._root,
               '--sys-path', json.dumps([p for p in sys.path if p])]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                      cwd=self._root, env=env, start_new_session=True, bufsize=0)
        self._buffer = b''
        header = self._read_header(time.monotonic() + self.startup_timeout)
        if header is None or header['status'] != 'ready':
            reason = header['error'] if header else f'no answer within {self.startup_timeout} s'
            self.close()
            raise RuntimeError(f'The CAD sandbox could not start the mesher {self.mesher!r}: {reason}')

    def close(self) -> None:
        """Stop the server (and any running worker) and remove its temporary folder."""
        if self._proc is not None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self._proc.wait()
            for stream in (self._proc.stdin, self._proc.stdout):
                stream.close()
            self._proc = None
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

    def __enter__(self) -> 'CodeSandbox':
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: modules may already be gone
            pass

    # -- protocol --------------------------------------------------------------------------------------------------
    def _read_until(self, size_or_newline, deadline: float) -> Optional[bytes]:
        """Read from the server until ``size`` bytes (int) or a newline (None) are buffered, or the deadline."""
        fd = self._proc.stdout.fileno()
        while True:
            if size_or_newline is None and b'\n' in self._buffer:
                line, _, self._buffer = self._buffer.partition(b'\n')
                return line
            if isinstance(size_or_newline, int) and len(self._buffer) >= size_or_newline:
                data, self._buffer = self._buffer[:size_or_newline], self._buffer[size_or_newline:]
                return data
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return None
            self._buffer += chunk

    def _read_header(self, deadline: float) -> Optional[dict]:
        line = self._read_until(None, deadline)
        try:
            header = json.loads(line) if line is not None else None
        except ValueError:
            return None
        ok = isinstance(header, dict) and header.get('status') in STATUSES + ('ready',) and \
            all(isinstance(header.get(k), int) and 0 <= header[k] <= 5_000_000 for k in ('nv', 'nf'))
        return header if ok else None

    def run(self, code: str) -> ExecutionResult:
        """Execute ``code`` and return its mesh, or an invalid result saying why."""
        if self._proc is None or self._proc.poll() is not None:
            self.close()
            self._start()
        request = dict(code=code, timeout=self.timeout, memory_mb=self.memory_mb, file_mb=self.file_mb,
                       mesher_kwargs=self.mesher_kwargs)
        deadline = time.monotonic() + self.timeout + 30.0  # the server enforces the timeout; this guards the server
        try:
            self._proc.stdin.write(json.dumps(request).encode() + b'\n')
            header = self._read_header(deadline)
            payload = None
            if header is not None:
                payload = self._read_until(24 * (header['nv'] + header['nf']), deadline)
        except (BrokenPipeError, OSError) as err:
            header, payload = None, None
            reason = f'server pipe failed: {err}'
        else:
            reason = 'server gave no valid reply in time'
        if header is None or payload is None:
            self.close()  # restarted on the next call
            return ExecutionResult('crash', error=reason)
        if header['status'] != 'ok':
            return ExecutionResult(header['status'], error=header['error'])
        nv = header['nv']
        vertices = np.frombuffer(payload[:24 * nv], dtype='<f8').reshape(nv, 3).astype(np.float64)
        faces = np.frombuffer(payload[24 * nv:], dtype='<i8').reshape(-1, 3).astype(np.int64)
        if len(faces) < self.min_faces:
            return ExecutionResult('invalid_shape', error=f'{len(faces)} faces (fewer than {self.min_faces})')
        if not np.isfinite(vertices).all() or faces.min() < 0 or faces.max() >= nv:
            return ExecutionResult('invalid_shape', error='non-finite vertices or out-of-range face indices')
        return ExecutionResult('ok', vertices, faces)


def run_code(code: str, **kwargs) -> ExecutionResult:
    """Execute one program in a fresh sandbox (see ``CodeSandbox`` for the keyword arguments)."""
    with CodeSandbox(**kwargs) as sandbox:
        return sandbox.run(code)
