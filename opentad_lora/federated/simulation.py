"""Run N clients x R rounds with Flower's simulation engine (``flwr.simulation.run_simulation``, Ray backend).

The ServerApp runs in a thread of this process, so the strategy and the server-side evaluation (global accuracy,
adapter saving) live here; each ClientApp runs in a Ray actor process that imports this package (the repository
root is put on the workers' ``PYTHONPATH``).
"""
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from opentad_lora.peft import save_adapter
from .params import get_parameter_names
from .partition import make_partition
from .report import plot_accuracy, write_history
from .task import FederatedTask, lora_a_digest

logger = logging.getLogger(__name__)
REPO_ROOT = str(Path(__file__).resolve().parents[2])


def _import_flower() -> Dict[str, Any]:
    try:
        from flwr.client import ClientApp
        from flwr.server import ServerApp, ServerAppComponents, ServerConfig
        from flwr.simulation import run_simulation
    except ImportError as err:
        raise ImportError('Federated simulation needs Flower with Ray: pip install "flwr[simulation]" '
                          '(or pip install -e .[federated]).') from err
    return dict(ClientApp=ClientApp, ServerApp=ServerApp, ServerAppComponents=ServerAppComponents,
                ServerConfig=ServerConfig, run_simulation=run_simulation)


def client_partitions(task: FederatedTask, dataset: Any) -> List[np.ndarray]:
    """The clients' index lists from ``federated.partition`` (``type`` iid|dirichlet, ``alpha``, ``seed``);
    empty partitions are logged."""
    fed = task.cfg['federated']
    part = {**dict(type='iid', alpha=0.5, seed=task.seed), **fed.get('partition', {})}
    labels = [dataset.get_data_info(i)['gt_label'] for i in range(len(dataset))]
    parts = make_partition(labels, int(fed['num_clients']), part['type'], float(part['alpha']), int(part['seed']))
    for client, indices in enumerate(parts):
        if len(indices) == 0:
            logger.warning('Client %d has an empty partition (%s split): it will report 0 examples every round.',
                           client, part['type'])
    return parts


def run_federated(cfg: Dict[str, Any], work_dir: str) -> List[Dict[str, float]]:
    """Simulate the federated run of ``cfg`` and write, under ``work_dir``: ``adapters/round_XXX/`` (PEFT adapter
    files of the global model each round, + ``residual.npz`` with ``residual='base'``), ``history.json`` and
    ``accuracy.png``.

    Returns:
        One row per round (0 = before training): ``round, top1, top5, loss, train_loss, up_bytes, down_bytes,
        cum_bytes, accepted, rejected, empty``.
    """
    flwr = _import_flower()
    from .strategy import LoRAStrategy
    work = Path(work_dir)
    (work / 'adapters').mkdir(parents=True, exist_ok=True)
    fed = cfg['federated']
    task = FederatedTask(cfg)
    train_set, test_set = task.build_dataset('train'), task.build_dataset('test')
    parts = [p.tolist() for p in client_partitions(task, train_set)]
    server_model = task.build_model()
    names = get_parameter_names(server_model)
    test_loader = task.loader(test_set)
    evaluations: Dict[int, Dict[str, float]] = {}

    def evaluate_fn(server_round: int, arrays: List[np.ndarray], config: Dict) -> Optional[tuple]:
        task.load_global(server_model, arrays)
        result = task.evaluate(server_model, test_loader)
        evaluations[server_round] = result
        out = save_adapter(server_model, work / 'adapters' / f'round_{server_round:03d}')
        if task.residual == 'base':
            np.savez(out / 'residual.npz', **dict(zip(task.layout(server_model).pairs, arrays[len(names):])))
        logger.info('Round %d: global top-1 %.2f%%, top-5 %.2f%%, loss %.4f', server_round, result['top1'],
                    result['top5'], result['loss'])
        return result['loss'], dict(top1=result['top1'], top5=result['top5'])

    num_clients = int(fed['num_clients'])
    per_round = max(1, int(round(float(fed.get('fraction_fit', 1.0)) * num_clients)))
    strategy = LoRAStrategy(
        task.method, names, task.global_state(server_model), residual=task.residual,
        lora_a_digest=lora_a_digest(server_model) if task.method == 'ffa' else None, evaluate_fn=evaluate_fn,
        fraction_fit=float(fed.get('fraction_fit', 1.0)), fraction_evaluate=float(fed.get('fraction_evaluate', 0.0)),
        min_fit_clients=per_round, min_evaluate_clients=1, min_available_clients=num_clients)

    def client_fn(context: Any) -> Any:
        from .client import LoRAClient
        pid = int(context.node_config['partition-id'])
        return LoRAClient(FederatedTask(cfg), pid, parts[pid]).to_client()

    def server_fn(context: Any) -> Any:
        return flwr['ServerAppComponents'](strategy=strategy,
                                           config=flwr['ServerConfig'](num_rounds=int(fed['num_rounds'])))

    paths = os.environ.get('PYTHONPATH', '').split(os.pathsep)
    if REPO_ROOT not in paths:
        os.environ['PYTHONPATH'] = os.pathsep.join(filter(None, [REPO_ROOT, *paths]))
    backend = dict(client_resources=dict(num_cpus=int(fed.get('client_cpus', 1)), num_gpus=0.0),
                   init_args=dict(num_cpus=int(fed.get('ray_cpus', os.cpu_count() or 1)), include_dashboard=False))
    flwr['run_simulation'](server_app=flwr['ServerApp'](server_fn=server_fn),
                           client_app=flwr['ClientApp'](client_fn=client_fn), num_supernodes=num_clients,
                           backend_config=backend)
    rows, cumulative = [], 0
    for server_round in sorted(evaluations):
        comm = strategy.rounds.get(server_round, {})
        cumulative += comm.get('up_bytes', 0) + comm.get('down_bytes', 0)
        rows.append(dict(round=server_round, **{k: evaluations[server_round][k] for k in ('top1', 'top5', 'loss')},
                         train_loss=comm.get('train_loss'), up_bytes=comm.get('up_bytes', 0),
                         down_bytes=comm.get('down_bytes', 0), cum_bytes=cumulative,
                         accepted=comm.get('accepted', 0), rejected=comm.get('rejected', 0),
                         empty=comm.get('empty', 0)))
    write_history(rows, work / 'history.json')
    plot_accuracy(rows, work / 'accuracy.png', title=f"{task.method} LoRA, {num_clients} clients")
    return rows
