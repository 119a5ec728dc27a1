"""Flower's deployment engine on loopback: a SuperLink (TLS, SuperNode authentication) and SuperNodes as separate
processes, each with its own partition (node config), trained through tools/federated_train.py --superlink.

One federation serves the module (its processes are killed at the end): two registered SuperNodes train; a third,
whose key was never registered, is refused while the run goes on. The results equal Flower's simulation engine for
the same seeds and partitions; SecAgg+ equals the plain aggregate within its quantisation error; a run resumed from
round 1 equals the uninterrupted one; a SuperNode killed mid-round does not stop the run.

Time: the ClientApp/ServerApp processes fork from one warm process (local_federation.py, warm_apps.py), and the
simulated runs (CPU-bound) go on in the background while the deployed ones mostly wait on Flower's polling.
"""
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest

pytest.importorskip('flwr')
pytest.importorskip('ray')

from opentad_lora.datasets.clip import write_synthetic_clip_data  # noqa: E402
from opentad_lora.peft.state import read_adapter  # noqa: E402

from local_federation import REPO, LocalFederation, process_env  # noqa: E402  (this folder is on sys.path)

CONFIG = str(REPO / 'configs' / 'clip' / 'federated_tiny_synthetic.py')
STRATEGIES = ('fedavg', 'ffa', 'exact')
PARTITIONS = {'node0': (0, 'partition-id=0 num-partitions=2'), 'node1': (1, 'partition-id=1 num-partitions=2')}


def load_tool(relative: str):
    path = REPO / relative
    spec = importlib.util.spec_from_file_location(f'fed_deploy_tool_{path.stem}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def adapter(work: Path, server_round: int) -> Dict[str, np.ndarray]:
    tensors, _, _ = read_adapter(work / 'adapters' / f'round_{server_round:03d}')
    return {key: value.numpy() for key, value in tensors.items()}


def history(work: Path) -> List[dict]:
    return json.loads((work / 'history.json').read_text())


@pytest.fixture(scope='module')
def inputs(tmp_path_factory) -> Tuple[Path, List[str]]:
    """The module's folder (data, certificates) and the ``--cfg-options`` of every run on its data."""
    root = tmp_path_factory.mktemp('federation')
    data = root / 'data'
    info = write_synthetic_clip_data(data, num_classes=4, train_per_class=8, val_per_class=4)
    load_tool('tools/data/make_synthetic_clip.py').write_pretrained_clip(
        dict(base='tiny', text=dict(vocab_size=1024)), data / 'pretrained.pth', seed=0)
    load_tool('tools/federated_certs.py').write_certificates(root / 'certs', ['127.0.0.1'], num_nodes=4)
    names = '[' + ','.join(f'"{n}"' for n in info['class_names']) + ']'
    options = [f'{k}={v}' for k, v in {
        'model.clip.pretrained': data / 'pretrained.pth', 'model.tokenizer.bpe_path': info['bpe_path'],
        'train_dataset.data_root': data / 'train', 'test_dataset.data_root': data / 'val',
        'federated.num_clients': 2, 'federated.num_rounds': 2, 'federated.round_timeout': 300,
        'model.class_names': names}.items()]
    return root, options


def strategy_options(strategy: str) -> List[str]:
    return [f'federated.strategy={strategy}'] + (['federated.residual=base'] if strategy == 'exact' else [])


def simulate(root: Path, options: List[str], strategy: str) -> Tuple[subprocess.CompletedProcess, Path]:
    """One round of ``strategy`` with Flower's simulation engine (Ray), through tools/federated_train.py."""
    work = root / f'{strategy}_simulated'
    out = subprocess.run([sys.executable, str(REPO / 'tools' / 'federated_train.py'), CONFIG, '--work-dir', str(work),
                          '--cfg-options', *options, *strategy_options(strategy), 'federated.num_rounds=1',
                          'federated.client_cpus=2', 'federated.ray_cpus=2'],  # one Ray actor serves both clients
                         cwd=REPO, env=process_env(root / 'simulation'), capture_output=True, text=True, timeout=900,
                         check=False)
    return out, work


@pytest.fixture(scope='module', autouse=True)
def simulated(inputs) -> Dict[str, Future]:
    """The simulated runs the deployed ones must equal, started first and run one after another in the background:
    they overlap the deployment's start and runs, which mostly wait on Flower's polling."""
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        yield {strategy: pool.submit(simulate, *inputs, strategy) for strategy in STRATEGIES}
    finally:
        pool.shutdown(cancel_futures=True)


@pytest.fixture(scope='module')
def federation(inputs):
    root, options = inputs
    with LocalFederation(root / 'processes', root / 'certs') as fed:
        fed.start_warm_apps()
        fed.start_superlink()
        for name, (node, node_config) in PARTITIONS.items():
            fed.register(node)
            fed.add_supernode(name, node, node_config)
        fed.add_supernode('intruder', 2, 'partition-id=0 num-partitions=2')  # key 2 was never registered
        fed.wait_for('warm', 'warm: ready', timeout=300)
        fed.options = options
        fed.root_dir = root
        yield fed


def train(fed: LocalFederation, name: str, *options: str, resume: bool = False, timeout: float = 600) -> Path:
    work = fed.root_dir / name
    out = fed.train([CONFIG, '--work-dir', str(work), '--cfg-options', *fed.options, *options]
                    + (['--resume'] if resume else []), timeout=timeout)
    assert out.returncode == 0, f'{out.stdout[-4000:]}\n{out.stderr[-4000:]}'
    return work


@pytest.fixture(scope='module')
def fedavg_run(federation) -> Path:
    return train(federation, 'fedavg')


def test_two_authenticated_supernodes_train_with_tls_and_an_unregistered_one_is_refused(federation, fedavg_run):
    rows = history(fedavg_run)
    assert [row['round'] for row in rows] == [0, 1, 2]
    assert [(row['accepted'], row['failures']) for row in rows[1:]] == [(2, 0), (2, 0)]
    assert rows[2]['loss'] < rows[0]['loss']
    assert 'Uvicorn running on https://127.0.0.1' in federation.log('superlink')
    # The SuperNode whose key was never registered: the SuperLink refuses to activate it and it exits.
    assert federation.procs['intruder'].poll() is not None and federation.procs['intruder'].returncode != 0
    intruder = federation.log('intruder')
    assert 'Failed to activate SuperNode' in intruder and 'SuperNode ID' not in intruder
    for name in PARTITIONS:
        assert 'SuperNode ID' in federation.log(name)


def test_a_supernode_killed_mid_round_does_not_stop_the_run(federation, fedavg_run):
    # Early in the module: its wait for the SuperLink to declare the killed SuperNode dead (heartbeats, ~1 min)
    # overlaps the background simulations. Once the run ends that node is offline, so later runs see the two others.
    federation.register(3)
    federation.add_supernode('doomed', 3, 'partition-id=1 num-partitions=2')
    federation.wait_for('doomed', 'SuperNode ID', timeout=120)
    work = federation.root_dir / 'fault'
    command = [sys.executable, str(REPO / 'tools' / 'federated_train.py'), CONFIG, '--work-dir', str(work),
               '--cfg-options', *federation.options, 'federated.num_clients=3', 'federated.min_fit_clients=2',
               'federated.min_available_clients=2', 'federated.round_timeout=300', '--superlink', 'loopback']
    with subprocess.Popen(command, cwd=REPO, env=federation.env(federation.cli_home), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as run:
        try:
            federation.wait_for('doomed', 'Start `flwr-clientapp` process', timeout=300)
            federation.kill('doomed')  # the SuperNode and its ClientApp die while training round 1
            output, _ = run.communicate(timeout=600)
        finally:
            if run.poll() is None:
                run.kill()
    assert run.returncode == 0, output[-4000:]
    rows = history(work)
    assert [row['round'] for row in rows] == [0, 1, 2]
    assert (rows[1]['accepted'], rows[1]['failures']) == (2, 1)
    assert rows[2]['accepted'] == 2 and rows[2]['loss'] < rows[0]['loss']
    doomed = re.search(r'SuperNode ID: (\d+)', federation.log('doomed')).group(1)
    listed = federation.flwr('supernode', 'list', 'loopback', '--format', 'json')
    assert [n['status'] for n in json.loads(listed.stdout)['nodes'] if n['node-id'] == doomed] == ['offline']


def assert_same_adapters(a: Dict[str, np.ndarray], b: Dict[str, np.ndarray], atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=0, atol=atol, err_msg=key)


@pytest.mark.parametrize('strategy', STRATEGIES)
def test_deployment_equals_simulation_for_the_same_seeds_and_partitions(federation, fedavg_run, simulated,
                                                                        strategy):
    deployed = fedavg_run if strategy == 'fedavg' else train(federation, strategy, *strategy_options(strategy),
                                                             'federated.num_rounds=1')
    out, sim = simulated[strategy].result(timeout=900)
    assert out.returncode == 0, f'{out.stdout[-4000:]}\n{out.stderr[-4000:]}'
    assert_same_adapters(adapter(deployed, 1), adapter(sim, 1))
    assert adapter(deployed, 1).keys() == adapter(deployed, 0).keys()
    assert not all(np.array_equal(a, b) for a, b in zip(adapter(deployed, 1).values(), adapter(deployed, 0).values()))
    for mine, theirs in zip(history(deployed)[:2], history(sim)):
        assert mine['round'] == theirs['round'] and mine['up_bytes'] == theirs['up_bytes']
        assert abs(mine['loss'] - theirs['loss']) < 1e-5 and mine['top1'] == theirs['top1']
    if strategy == 'exact':
        with np.load(deployed / 'adapters' / 'round_001' / 'residual.npz') as a, \
                np.load(sim / 'adapters' / 'round_001' / 'residual.npz') as b:
            assert sorted(a.files) == sorted(b.files)
            for key in a.files:
                np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-6)


def test_secagg_plus_aggregate_equals_the_plain_one_within_its_quantisation_error(federation, fedavg_run):
    clip, levels, max_weight = 8.0, 2 ** 22, 16.0  # each client holds 16 images: weight ratio n_k / max_weight = 1
    secure = train(federation, 'secagg', 'federated.num_rounds=1',
                   'federated.secagg.enabled=True', f'federated.secagg.clipping_range={clip}',
                   f'federated.secagg.quantization_range={levels}', f'federated.secagg.max_weight={max_weight}')
    rows = history(secure)
    assert [(row['round'], row['accepted']) for row in rows] == [(0, 0), (1, 2)]
    # Each client's weighted update is quantised with step 2 * clip / levels (stochastic rounding: error < 1 step);
    # the server divides the sum by the sum of the weight ratios.
    bound = 2 * (2 * clip / levels) / (2 * 16 / max_weight)
    plain, masked = adapter(fedavg_run, 1), adapter(secure, 1)
    errors = [np.abs(plain[key] - masked[key]).max() for key in plain]
    assert 0 < max(errors) <= bound  # quantised (not the plain path), and within SecAgg+'s error


def test_a_run_resumed_from_round_1_equals_the_uninterrupted_run(federation, fedavg_run):
    # What the uninterrupted run had written when its round 1 ended: all that a run stopped there leaves behind.
    stopped = federation.root_dir / 'resumed'
    for server_round in (0, 1):
        folder = Path('adapters') / f'round_{server_round:03d}'
        shutil.copytree(fedavg_run / folder, stopped / folder)
    (stopped / 'history.json').write_text(json.dumps(history(fedavg_run)[:2]))
    resumed = train(federation, 'resumed', resume=True)
    assert [row['round'] for row in history(resumed)] == [0, 1, 2]
    assert_same_adapters(adapter(resumed, 2), adapter(fedavg_run, 2), atol=0)
    for mine, theirs in zip(history(resumed), history(fedavg_run)):
        assert mine == theirs
