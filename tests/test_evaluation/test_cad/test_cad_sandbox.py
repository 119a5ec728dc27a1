"""The sandbox contains what generated code can do wrong: loops, file removal and writes, sockets, subprocesses,
memory bombs, crashes; every failure is an invalid result and the sandbox keeps working afterwards."""
import time

import numpy as np
import pytest

from opentad_lora.evaluation.cad.sandbox import CodeSandbox, run_code

TETRA = "r = ([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], [[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])\n"


@pytest.fixture(scope='module')
def sandbox():
    with CodeSandbox(mesher='arrays', timeout=1.0, memory_mb=256) as box:
        yield box


def test_valid_program_returns_its_mesh(sandbox):
    result = sandbox.run(TETRA)
    assert result.valid and result.status == 'ok'
    np.testing.assert_array_equal(result.vertices, [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    np.testing.assert_array_equal(result.faces, [[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])


@pytest.mark.parametrize('code', ['while True:\n    pass\n', 'import time\ntime.sleep(60)\n'])
def test_infinite_loop_times_out_and_the_sandbox_survives(sandbox, code):
    start = time.monotonic()
    result = sandbox.run(code)
    assert result.status == 'timeout' and not result.valid
    assert time.monotonic() - start < 5.0
    assert sandbox.run(TETRA).valid


@pytest.mark.parametrize('swallow', [False, True])
def test_os_remove_outside_the_temp_dir_is_refused(sandbox, tmp_path, swallow):
    victim = tmp_path / 'victim.txt'
    victim.write_text('keep me')
    call = f'os.remove({str(victim)!r})'
    body = f'try:\n    {call}\nexcept Exception:\n    pass\n' if swallow else call + '\n'
    result = sandbox.run('import os\n' + body + TETRA)
    # Even when the program catches the refusal and defines a valid r, the attempt makes it invalid.
    assert result.status == 'forbidden' and 'os.remove' in result.error
    assert victim.read_text() == 'keep me'


def test_writes_are_refused_outside_and_allowed_inside_the_temp_dir(sandbox, tmp_path):
    target = tmp_path / 'written.txt'
    result = sandbox.run(f'open({str(target)!r}, "w").write("x")\n' + TETRA)
    assert result.status == 'forbidden' and not target.exists()
    result = sandbox.run('import os\nopen("scratch.txt", "w").write("x")\nos.remove("scratch.txt")\n' + TETRA)
    assert result.valid


@pytest.mark.parametrize('code,event', [
    ('import socket\nsocket.create_connection(("127.0.0.1", 9))\n', 'socket'),
    ('import subprocess\nsubprocess.run(["true"])\n', 'subprocess.Popen'),
    ('import os\nos.system("true")\n', 'os.system'),
    ('import ctypes\nctypes.CDLL(None)\n', 'ctypes'),
])
def test_network_processes_and_ctypes_are_refused(sandbox, code, event):
    result = sandbox.run(code + TETRA)
    assert result.status == 'forbidden' and event in result.error


@pytest.mark.parametrize('code,status', [
    ('x = bytearray(4 * 2 ** 30)\n', 'memory'),
    ('r = (\n', 'error'),
    ('raise SystemExit(0)\n', 'error'),
    ('x = 1\n', 'error'),  # no result variable r
    ('import os\nos._exit(3)\n', 'crash'),
    ('r = ([[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[0, 1, 2]])\n', 'invalid_shape'),  # fewer than 3 faces
    ('r = ([[0, 0, float("nan")], [1, 0, 0], [0, 1, 0]], [[0, 1, 2]] * 3)\n', 'invalid_shape'),
])
def test_failures_are_invalid_results(sandbox, code, status):
    result = sandbox.run(code)
    assert result.status == status and not result.valid
    assert sandbox.run(TETRA).valid


def test_a_killed_server_is_restarted():
    with CodeSandbox(mesher='arrays', timeout=1.0) as box:
        assert box.run(TETRA).valid
        box._proc.kill()
        box._proc.wait()
        assert box.run(TETRA).valid


def test_unknown_mesher_fails_clearly():
    with pytest.raises(RuntimeError, match='no_such_module'):
        run_code(TETRA, mesher='no_such_module:mesh')
