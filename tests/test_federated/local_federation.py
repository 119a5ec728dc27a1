"""A Flower deployment on this machine for the tests: a SuperLink and SuperNodes as separate processes, started with
Flower's own commands on 127.0.0.1 only (free ports picked at random), TLS always on, SuperNode authentication on;
every process is killed (its whole process group) when the ``with`` block ends, whatever happened. Their
``flwr-clientapp`` and ``flwr-serverapp`` processes are forked from one warm process (``warm_apps.py``)."""
import os
import signal
import socket
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

from warm_apps import write_shims

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
HOST = '127.0.0.1'


def descendants(pid: int) -> List[int]:
    """Every process below ``pid`` (Flower detaches some children into sessions of their own)."""
    children: Dict[int, List[int]] = {}
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            ppid = int(stat.read_text().rsplit(')', 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


# `flower-superlink` whose app tasks tolerate 6 missed heartbeats (30 s apart) instead of 2. Flower 1.42 fails a
# running ServerApp task whose heartbeats stop for 60 s; on this 2-core machine, with two SuperNodes training, that
# has happened mid-round (run 'finished:failed', "No heartbeat received from the task"; upstream:
# flwrlabs/flower#7268, #7391). SuperNode liveness keeps Flower's tolerance (a killed node is noticed as fast).
# What the tests check (our app's rounds, files and numbers) does not depend on it.
PATIENT_SUPERLINK = """import sys
from flwr.supercore.corestate import in_memory_corestate, sql_corestate
in_memory_corestate.HEARTBEAT_PATIENCE = sql_corestate.HEARTBEAT_PATIENCE = 6
from flwr.superlink.cli import flower_superlink
sys.argv[0] = 'flower-superlink'
sys.exit(flower_superlink())
"""


def process_env(home: Path, *path_first: Path) -> Dict[str, str]:
    """The environment of a Flower process here: its own Flower home, this repository importable, one torch thread,
    no telemetry, ``path_first`` then this Python's commands first on ``PATH``."""
    path = os.pathsep.join([*map(str, path_first), str(BIN), os.environ.get('PATH', '')])
    return dict(os.environ, FLWR_HOME=str(home), PYTHONPATH=str(REPO), OMP_NUM_THREADS='1', PATH=path,
                FLWR_TELEMETRY_ENABLED='0')


class LocalFederation:
    """``with LocalFederation(root, certs) as fed: fed.add_supernode(...); fed.train([...])``.

    Args:
        root: Folder for the processes' Flower homes and logs.
        certs: Folder written by ``tools/federated_certs.py`` (``ca.crt``, ``server.crt/key``, ``node_K[.pub]``).
    """

    def __init__(self, root: Path, certs: Path) -> None:
        self.root, self.certs = Path(root), Path(certs)
        self.port = free_port()
        self.procs: Dict[str, subprocess.Popen] = {}
        self.cli_home = self.root / 'flwr_cli'
        self.cli_home.mkdir(parents=True, exist_ok=True)
        self.socket_dir = Path(tempfile.mkdtemp(prefix='flwr_warm_'))  # short: a socket path has < 108 bytes
        self.shims = write_shims(self.root / 'warm_bin', self.socket_dir / 'apps.sock')
        # The SuperLink connection `flwr` uses: TLS, verified with our CA.
        (self.cli_home / 'config.toml').write_text(
            f'[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\naddress = "{HOST}:{self.port}"\n'
            f'root-certificates = "{self.certs / "ca.crt"}"\n')

    def env(self, home: Path) -> Dict[str, str]:
        return process_env(home, self.shims)

    def _start(self, name: str, command: List[str]) -> subprocess.Popen:
        home = self.root / name
        home.mkdir(parents=True, exist_ok=True)
        log = open(self.root / f'{name}.log', 'wb')  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(command, cwd=REPO, env=self.env(home), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        path = self.root / f'{name}.log'
        return path.read_text(errors='replace') if path.is_file() else ''

    def wait_for(self, name: str, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log(name):
            if self.procs[name].poll() is not None and text not in self.log(name):
                raise RuntimeError(f'{name} exited ({self.procs[name].returncode}):\n{self.log(name)[-3000:]}')
            if time.monotonic() > deadline:
                raise TimeoutError(f'{name}: no {text!r} within {timeout} s:\n{self.log(name)[-3000:]}')
            time.sleep(0.2)

    def start_warm_apps(self) -> None:
        """The warm process the ``flwr-clientapp``/``flwr-serverapp`` scripts fork from (ready when it logs
        ``warm: ready``; until then the scripts start Flower's commands)."""
        self._start('warm', [sys.executable, str(Path(__file__).with_name('warm_apps.py')),
                             str(self.socket_dir / 'apps.sock')])

    def start_superlink(self, timeout: float = 60) -> None:
        self._start('superlink', [
            sys.executable, '-c', PATIENT_SUPERLINK, '--host', HOST, '--port', str(self.port),
            '--ssl-ca-certfile', str(self.certs / 'ca.crt'), '--ssl-certfile', str(self.certs / 'server.crt'),
            '--ssl-keyfile', str(self.certs / 'server.key'), '--enable-supernode-auth',
            '--disable-runtime-dependency-installation'])
        self.wait_for('superlink', 'Uvicorn running', timeout)

    def flwr(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / 'flwr'), *args], cwd=REPO, env=self.env(self.cli_home), capture_output=True,
                              text=True, timeout=timeout, check=False)

    def register(self, node: int) -> None:
        out = self.flwr('supernode', 'register', str(self.certs / f'node_{node}.pub'), 'loopback')
        assert out.returncode == 0, out.stdout + out.stderr

    def add_supernode(self, name: str, node: int, node_config: str) -> subprocess.Popen:
        return self._start(name, [
            str(BIN / 'flower-supernode'), '--superlink', f'{HOST}:{self.port}',
            '--root-certificates', str(self.certs / 'ca.crt'),
            '--auth-supernode-private-key', str(self.certs / f'node_{node}'),
            '--host', HOST, '--port', str(free_port()), '--node-config', node_config])

    def train(self, args: List[str], timeout: float) -> subprocess.CompletedProcess:
        """``tools/federated_train.py ARGS --superlink loopback`` with this federation's Flower home."""
        return subprocess.run([sys.executable, str(REPO / 'tools' / 'federated_train.py'), *args,
                               '--superlink', 'loopback'], cwd=REPO, env=self.env(self.cli_home),
                              capture_output=True, text=True, timeout=timeout, check=False)

    def kill(self, name: str) -> None:
        """SIGKILL the process, its process group and every process it started."""
        proc = self.procs[name]
        for pid in [proc.pid, *descendants(proc.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)

    def __enter__(self) -> 'LocalFederation':
        return self

    def __exit__(self, *exc: Optional[BaseException]) -> None:
        for name in list(self.procs):
            try:
                self.kill(name)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        shutil.rmtree(self.socket_dir, ignore_errors=True)
