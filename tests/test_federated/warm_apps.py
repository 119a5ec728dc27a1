"""Warm Flower app processes for the deployment tests: Flower 1.42 starts a fresh ``flwr-clientapp`` process for every
message a SuperNode receives (and a ``flwr-serverapp`` per run), and each one spends ~10 s importing torch, our
models and MMEngine's optimizer registry (transformers, peft, bitsandbytes) before it does a second of work.

Here one Python process imports all of that once (:func:`serve`) and forks a copy per request; ``flwr-clientapp`` and
``flwr-serverapp`` on the SuperLink's and SuperNodes' ``PATH`` are small scripts (:func:`write_shims`) that hand their
arguments, environment, working folder and stdin/stdout/stderr to that process and return the exit status of Flower's
own entry point run in the fork. Nothing else changes: the SuperLink, SuperNodes and SuperExecs are Flower's
commands, and the app is loaded from the run's FAB as usual. Killing a script (a killed SuperNode takes its
SuperExec and scripts down) kills its fork; a script that cannot reach the warm process runs Flower's command itself.

This module imports the standard library only at the top: the scripts import it on every launch.
"""
import json
import os
import select
import signal
import socket
import sys
import traceback
from pathlib import Path
from typing import Dict, Iterable

COMMANDS = ('flwr-clientapp', 'flwr-serverapp')
PRELOAD = ('opentad_lora.federated.app', 'opentad_lora.federated.client', 'opentad_lora.federated.server',
           'opentad_lora.federated.strategy', 'mmengine.optim', 'matplotlib.pyplot')
_FORWARDED = {b'T': signal.SIGTERM, b'I': signal.SIGINT}


def write_shims(folder: Path, socket_path: Path, commands: Iterable[str] = COMMANDS) -> Path:
    """Executable scripts named like Flower's ``commands`` in ``folder`` (put it first on ``PATH``)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in commands:
        shim = folder / name
        shim.write_text(f'#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n'
                        f'from warm_apps import relay\nrelay({str(socket_path)!r}, {name!r})\n')
        shim.chmod(0o755)
    return folder


def relay(socket_path: str, command: str) -> None:
    """The script's body: run ``command`` in a fork of the warm process (or, without one, Flower's own command)."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(socket_path)
    except OSError:
        real = Path(sys.executable).with_name(command)
        os.execv(str(real), [str(real), *sys.argv[1:]])
    request = json.dumps(dict(argv=[command, *sys.argv[1:]], env=dict(os.environ), cwd=os.getcwd())).encode()
    socket.send_fds(conn, [len(request).to_bytes(8, 'big') + request], [0, 1, 2])
    for code, signum in _FORWARDED.items():  # e.g. the SuperExec stopping its app: pass it on to the fork
        signal.signal(signum, lambda *_, code=code: conn.sendall(code))
    reply = b''
    while not reply.endswith(b'\n'):
        chunk = conn.recv(64)
        if not chunk:  # the warm process died
            sys.exit(1)
        reply += chunk
    status = int(reply)
    if status < 0:  # the fork was killed by a signal: die the same way
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    sys.exit(status)


def _receive(conn: socket.socket) -> Dict:
    data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
    size = int.from_bytes(data[:8], 'big')
    while len(data) < 8 + size:
        data += conn.recv(1 << 20)
    return dict(json.loads(data[8:8 + size]), fds=fds)


def _run_app(request: Dict) -> None:
    """In the fork: become the script's process (stdio, environment, folder, arguments) and run the command."""
    from importlib.metadata import entry_points
    for target, fd in enumerate(request['fds']):
        os.dup2(fd, target)
        os.close(fd)
    os.environ.clear()
    os.environ.update(request['env'])
    os.chdir(request['cwd'])
    sys.argv = list(request['argv'])
    code = 1
    try:
        entry_points(group='console_scripts', name=sys.argv[0])[sys.argv[0]].load()()
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else int(done.code is not None)
    except BaseException:  # noqa: B036 - reported like a crashed command
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _manage(conn: socket.socket) -> None:
    """In a fork per request: fork the app, pass on forwarded signals, kill the app if the script dies, and send
    the script the app's exit status (negative: killed by that signal)."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    request = _receive(conn)
    app = os.fork()
    if app == 0:
        conn.close()
        _run_app(request)
    for fd in request['fds']:
        os.close(fd)
    while True:
        done, status = os.waitpid(app, os.WNOHANG)
        if done:
            conn.sendall(b'%d\n' % os.waitstatus_to_exitcode(status))
            return
        if select.select([conn], [], [], 0.1)[0]:
            message = conn.recv(1)
            if not message:  # the script is gone (killed with its SuperNode): so is its app
                os.kill(app, signal.SIGKILL)
                os.waitpid(app, 0)
                return
            if message in _FORWARDED:
                os.kill(app, _FORWARDED[message])


def serve(socket_path: str, preload: Iterable[str] = PRELOAD) -> None:
    """The warm process: import ``preload`` once, then fork a manager per connection on ``socket_path``."""
    import importlib
    import threading
    for module in preload:
        importlib.import_module(module)
    from opentad_lora.registry import register_all_modules
    register_all_modules()
    threads = len(os.listdir('/proc/self/task')) if os.path.isdir('/proc/self/task') else threading.active_count()
    if threads != 1:  # forking a process with other threads may copy their locks held
        raise RuntimeError(f'The warm process runs {threads} threads after its imports; it must run one to fork.')
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # managers are reaped by the kernel
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(socket_path)
    server.listen(64)
    print(f'warm: ready on {socket_path}', flush=True)
    while True:
        conn, _ = server.accept()
        sys.stdout.flush()
        sys.stderr.flush()
        if os.fork() == 0:
            server.close()
            try:
                _manage(conn)
            finally:
                os._exit(0)
        conn.close()


if __name__ == '__main__':
    serve(sys.argv[1])
