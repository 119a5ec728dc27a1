"""Submit a run of our Flower App to a running SuperLink (Flower's deployment engine) with Flower's own CLI:

    flwr run opentad_lora/federated/flower_app CONNECTION --run-config WORK_DIR/run_config.toml --stream

``CONNECTION`` names a SuperLink connection of Flower's configuration file (``$FLWR_HOME/config.toml``, by default
``~/.flwr/config.toml``: its address and, for TLS, ``root-certificates``). The command streams the server's log until
the run ends; the run's final status is then read with ``flwr list`` and a run that did not complete is an error.
"""
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List

import tomli_w

from .app import RunSpec

APP_DIR = Path(__file__).resolve().parent / 'flower_app'
_STARTED = re.compile(r'Successfully started run (\d+)')


def flwr_executable() -> str:
    """Flower's ``flwr`` command of this Python environment (or the one on PATH)."""
    beside = Path(sys.executable).with_name('flwr')
    found = str(beside) if beside.is_file() else shutil.which('flwr')
    if not found:
        raise FileNotFoundError('The `flwr` command was not found: pip install "flwr[simulation]" '
                                '(or pip install -e .[federated]).')
    return found


def run_command(spec: RunSpec, connection: str) -> List[str]:
    """Write ``work_dir/run_config.toml`` and return the ``flwr run`` command that submits ``spec``."""
    work = Path(spec.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    run_config = work / 'run_config.toml'
    run_config.write_text(tomli_w.dumps(spec.to_run_config()), encoding='utf-8')
    return [flwr_executable(), 'run', str(APP_DIR), connection, '--run-config', str(run_config), '--stream']


def run_status(connection: str, run_id: int) -> str:
    """The status text of a run (``finished:completed``, ``finished:failed``...) from ``flwr list``."""
    out = subprocess.run([flwr_executable(), 'list', connection, '--run-id', str(run_id), '--format', 'json'],
                         capture_output=True, text=True, check=False)
    try:
        return json.loads(out.stdout)['runs'][0]['status']
    except (ValueError, KeyError, IndexError):
        raise RuntimeError(f'Cannot read the status of run {run_id}: {out.stdout}{out.stderr}') from None


def submit(spec: RunSpec, connection: str) -> int:
    """Submit ``spec`` to the SuperLink of ``connection``, stream its log and wait for its end.

    Returns:
        The run id.

    Raises:
        RuntimeError: if the run could not be started or did not complete (its status is named).
    """
    command = run_command(spec, connection)
    print('$ ' + shlex.join(command), flush=True)
    run_id = None
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            print(line, end='', flush=True)
            started = _STARTED.search(line)
            run_id = int(started.group(1)) if started and run_id is None else run_id
    if proc.returncode != 0 or run_id is None:
        raise RuntimeError(f'`flwr run` failed (exit status {proc.returncode}); see its output above.')
    status = run_status(connection, run_id)
    if not status.endswith('completed'):
        raise RuntimeError(f'Run {run_id} ended as {status!r}: see the log above (`flwr log {run_id} '
                           f'{connection}` prints it again).')
    return run_id
