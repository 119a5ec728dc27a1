"""The Flower App of federated LoRA: one ServerApp and one ClientApp, run by Flower's simulation engine (Ray, one
process) or by its deployment engine (a SuperLink and SuperNodes as separate processes or machines, ``flwr run``).

What a run does comes from our Python config, resolved by ``tools/federated_train.py`` and carried as JSON in
Flower's run config, so every node trains the same recipe:

* run config: ``config`` (the resolved config as JSON), ``work-dir`` (the server's output folder, on the SuperLink's
  machine), ``resume`` (continue from the last round saved there).
* node config of a SuperNode (``flower-supernode --node-config``): ``partition-id`` (this client's index: its seeds
  and logs), ``num-partitions`` (split the training set like the simulation does and keep part ``partition-id``;
  without it the node trains on all of its training set), ``data-root`` (this node's own training folder, replacing
  ``train_dataset.data_root``) and ``device`` (``cpu``, ``cuda:0``...).

The server side is the same in both engines: :class:`~opentad_lora.federated.strategy.LoRAStrategy` through
Flower's legacy round loop (``start_grid``: ``round_timeout`` and the minimum client counts apply), or, with
``federated.secagg.enabled``, through Flower's ``SecAggPlusWorkflow`` with the ``secaggplus_mod`` on the clients.
"""
import copy
import json
import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

try:
    from flwr.app import Context, Message
    from flwr.client.mod import secaggplus_mod
    from flwr.clientapp import ClientApp
    from flwr.server import ServerConfig
    from flwr.server.compat import LegacyContext, start_grid
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.serverapp import Grid, ServerApp
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError('Federated training needs Flower: pip install "flwr[simulation]" '
                      '(or pip install -e .[federated]).') from err

from .partition import make_partition
from .server import ServerRun
from .task import FederatedTask, lora_a_digest, secagg_settings

logger = logging.getLogger(__name__)
SECAGG_DEFAULTS = dict(num_shares=1.0, reconstruction_threshold=0.5, max_weight=1000.0, clipping_range=8.0,
                       quantization_range=2 ** 22)


@dataclass
class RunSpec:
    """One run: the resolved config, the server's output folder, and whether it resumes."""

    cfg: Dict[str, Any]
    work_dir: str
    resume: bool = False

    def to_run_config(self) -> Dict[str, Any]:
        """Flower's run config (flat TOML values) carrying this spec to every node."""
        return {'config': json.dumps(self.cfg, sort_keys=True, default=str), 'work-dir': self.work_dir,
                'resume': self.resume}

    @classmethod
    def from_run_config(cls, run_config: Dict[str, Any]) -> 'RunSpec':
        """Raises ValueError when the run was not started through ``tools/federated_train.py``."""
        if not run_config.get('config'):
            raise ValueError("The run config has no 'config': start federated runs with tools/federated_train.py "
                             'CONFIG --superlink CONNECTION, which resolves our config and sends it to every node.')
        return cls(json.loads(run_config['config']), str(run_config.get('work-dir', '')),
                   bool(run_config.get('resume', False)))


def client_indices(task: FederatedTask, dataset: Any, partition_id: int, num_partitions: Optional[int]) -> list:
    """This client's training indices: part ``partition_id`` of the config's split into ``num_partitions`` (the
    simulation's split of the same data and seed), or all of ``dataset`` when ``num_partitions`` is None."""
    if num_partitions is None:
        return list(range(len(dataset)))
    part = {**dict(type='iid', alpha=0.5, seed=task.seed), **task.cfg['federated'].get('partition', {})}
    labels = [dataset.get_data_info(i)['gt_label'] for i in range(len(dataset))]
    parts = make_partition(labels, num_partitions, part['type'], float(part['alpha']), int(part['seed']))
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f'node config partition-id={partition_id} is outside 0..{num_partitions - 1} '
                         f'(num-partitions={num_partitions}).')
    if len(parts[partition_id]) == 0:
        logger.warning('Client %d has an empty partition (%s split): it reports 0 examples every round.',
                       partition_id, part['type'])
    return parts[partition_id].tolist()


def build_client(context: Context, spec: RunSpec) -> Any:
    """The ClientApp's ``client_fn``: a :class:`LoRAClient` on this node's data and device."""
    from .client import LoRAClient
    node = context.node_config
    if 'partition-id' not in node:
        raise ValueError('This SuperNode has no partition-id in its node config: start it with '
                         "--node-config 'partition-id=K ...' (K = its client index, which seeds its training).")
    cfg = copy.deepcopy(spec.cfg)
    if node.get('data-root'):
        cfg['train_dataset']['data_root'] = str(node['data-root'])
    task = FederatedTask(cfg)
    dataset = task.build_dataset('train')
    num_partitions = int(node['num-partitions']) if 'num-partitions' in node else None
    partition_id = int(node['partition-id'])
    indices = client_indices(task, dataset, partition_id, num_partitions)
    return LoRAClient(task, partition_id, indices, dataset, device=str(node.get('device', 'cpu'))).to_client()


def serve(grid: Grid, context: Context, spec: RunSpec) -> None:
    """The ServerApp's main: run the remaining rounds, evaluating and saving the global adapter after each."""
    from .strategy import LoRAStrategy
    task = FederatedTask(spec.cfg)
    fed = spec.cfg['federated']
    run = ServerRun(task, spec.work_dir, resume=spec.resume)
    remaining = int(fed['num_rounds']) - run.start_round
    if remaining <= 0:
        logger.warning('Nothing to do: %d of %d rounds are already in %s.', run.start_round, fed['num_rounds'],
                       spec.work_dir)
        return
    num_clients = int(fed['num_clients'])
    per_round = max(1, int(round(float(fed.get('fraction_fit', 1.0)) * num_clients)))
    run.strategy = strategy = LoRAStrategy(
        task.method, run.names, run.initial_arrays, residual=task.residual, round_offset=run.start_round,
        lora_a_digest=lora_a_digest(run.model) if task.method == 'ffa' else None, evaluate_fn=run.evaluate,
        fraction_fit=float(fed.get('fraction_fit', 1.0)), fraction_evaluate=float(fed.get('fraction_evaluate', 0.0)),
        min_fit_clients=int(fed.get('min_fit_clients', per_round)), min_evaluate_clients=1,
        min_available_clients=int(fed.get('min_available_clients', num_clients)))
    timeout = fed.get('round_timeout')
    config = ServerConfig(num_rounds=remaining, round_timeout=None if timeout is None else float(timeout))
    if task.secagg is not None:
        workflow = SecAggPlusWorkflow(**{**SECAGG_DEFAULTS, **task.secagg}, timeout=config.round_timeout)
        DefaultWorkflow(fit_workflow=workflow)(grid, LegacyContext(context, config=config, strategy=strategy))
    else:
        start_grid(grid=grid, strategy=strategy, config=config)
    run.finish(title=f"{task.method} LoRA, {num_clients} clients")


def make_server_app(get_spec: Callable[[Context], RunSpec]) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        serve(grid, context, get_spec(context))

    return app


def make_client_app(get_spec: Callable[[Context], RunSpec]) -> ClientApp:
    def secagg_when_configured(msg: Message, context: Context, call_next: Callable) -> Message:
        """Flower's ``secaggplus_mod`` for runs with ``federated.secagg``; plain messages otherwise."""
        if secagg_settings(get_spec(context).cfg['federated']) is not None:
            return secaggplus_mod(msg, context, call_next)
        return call_next(msg, context)

    return ClientApp(client_fn=lambda context: build_client(context, get_spec(context)),
                     mods=[secagg_when_configured])


def _spec_of_run(context: Context) -> RunSpec:
    return RunSpec.from_run_config(context.run_config)


# The components of the Flower App (opentad_lora/federated/flower_app/pyproject.toml) for the deployment engine.
server_app = make_server_app(_spec_of_run)
client_app = make_client_app(_spec_of_run)
