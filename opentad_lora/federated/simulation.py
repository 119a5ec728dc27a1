"""Run the Flower App of :mod:`opentad_lora.federated.app` with Flower's simulation engine
(``flwr.simulation.run_simulation``, Ray backend): N virtual SuperNodes in one machine.

The ServerApp runs in a thread of this process; each ClientApp runs in a Ray actor process that imports this package
(the repository root is put on the workers' ``PYTHONPATH``). Each virtual SuperNode gets Flower's ``partition-id``
and ``num-partitions`` node config, so it trains the same partition a deployed SuperNode with that node config does.
"""
import json
import os
from pathlib import Path
from typing import Any, Dict, List

from .app import RunSpec, make_client_app, make_server_app

REPO_ROOT = str(Path(__file__).resolve().parents[2])


def run_federated(cfg: Dict[str, Any], work_dir: str, resume: bool = False) -> List[Dict[str, Any]]:
    """Simulate the federated run of ``cfg``; write what :class:`~opentad_lora.federated.server.ServerRun` writes
    under ``work_dir`` (``resume``: continue from its last saved round).

    Returns:
        One row per round (0 = before training): ``round, top1, top5, loss, train_loss, up_bytes, down_bytes,
        cum_bytes, accepted, rejected, empty, failures``.
    """
    try:
        from flwr.simulation import run_simulation
    except ImportError as err:
        raise ImportError('Federated simulation needs Flower with Ray: pip install "flwr[simulation]" '
                          '(or pip install -e .[federated]).') from err
    spec = RunSpec(cfg, str(work_dir), resume)
    fed = cfg['federated']
    paths = os.environ.get('PYTHONPATH', '').split(os.pathsep)
    if REPO_ROOT not in paths:
        os.environ['PYTHONPATH'] = os.pathsep.join(filter(None, [REPO_ROOT, *paths]))
    backend = dict(client_resources=dict(num_cpus=int(fed.get('client_cpus', 1)), num_gpus=0.0),
                   init_args=dict(num_cpus=int(fed.get('ray_cpus', os.cpu_count() or 1)), include_dashboard=False))
    run_simulation(server_app=make_server_app(lambda context: spec),
                   client_app=make_client_app(lambda context: spec), num_supernodes=int(fed['num_clients']),
                   backend_config=backend)
    history = Path(work_dir) / 'history.json'
    if not history.is_file():
        raise RuntimeError(f'The simulation ended without writing {history}: see the Flower log above.')
    return json.loads(history.read_text())
