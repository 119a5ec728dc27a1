"""Flower's deployment engine on loopback: a SuperLink (TLS, SuperNode authentication) and SuperNodes as separate
processes, each with its own partition (node config), trained through tools/federated_train.py --superlink.

One federation serves the module (its processes are killed at the end): two registered SuperNodes train; a third,
whose key was never registered, is refused while the run goes on. The results equal Flower's simulation engine for
the same seeds and partitions; SecAgg+ equals the plain aggregate within its quantisation error; a run resumed from
round 1 equals the uninterrupted one; a SuperNode killed mid-round does not stop the run.
"""
import importlib.util
import json
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

pytest.importorskip('flwr')
pytest.importorskip('ray')

from opentad_lora.datasets.clip import write_synthetic_clip_data  # noqa: E402
from opentad_lora.peft.state import read_adapter  # noqa: E402

from .local_federation import REPO, LocalFederation  # noqa: E402

CONFIG = str(REPO / 'configs' / 'clip' / 'federated_tiny_synthetic.py')
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
def federation(tmp_path_factory):
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
        'federated.num_clients': 2, 'federated.num_rounds': 2, 'federated.round_timeout': 300}.items()]
    with LocalFederation(root / 'processes', root / 'certs') as fed:
        fed.start_superlink()
        for name, (node, node_config) in PARTITIONS.items():
            fed.register(node)
            fed.add_supernode(name, node, node_config)
        fed.add_supernode('intruder', 2, 'partition-id=0 num-partitions=2')  # key 2 was never registered
        fed.options = options + [f'model.class_names={names}']
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
    intruder = federation.log('intruder')
    assert 'SuperNode ID' not in intruder and 'registration' in intruder.lower()
    for name in PARTITIONS:
        assert 'SuperNode ID' in federation.log(name)
