"""Flower server strategy for LoRA: FedAvg's sampling and evaluation, our aggregation (``fedavg``/``ffa``/``exact``),
validation of every client update, and communication accounting."""
import logging
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .aggregation import LoRALayout, aggregate, check_arrays

try:
    from flwr.common import (EvaluateRes, FitIns, FitRes, Parameters, Scalar, ndarrays_to_parameters,
                             parameters_to_ndarrays)
    from flwr.server.client_manager import ClientManager
    from flwr.server.client_proxy import ClientProxy
    from flwr.server.strategy import FedAvg
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError('Federated training needs Flower: pip install "flwr[simulation]" '
                      '(or pip install -e .[federated]).') from err

logger = logging.getLogger(__name__)


def payload_bytes(parameters: Parameters) -> int:
    """Bytes of the serialised arrays (what goes over the wire, without the message envelope)."""
    return sum(len(tensor) for tensor in parameters.tensors)


def _describe(failure) -> str:
    """One line for a failed client: the exception, or the status a client sent back."""
    if isinstance(failure, BaseException):
        return f'{type(failure).__name__}: {failure}'
    _, res = failure
    return f'status {res.status.code.name}: {res.status.message}'


class LoRAStrategy(FedAvg):
    """FedAvg's client sampling and server-side evaluation with LoRA-aware aggregation.

    Each client update is checked (count, shapes, finiteness) against the exchanged LoRA tensors; a bad update is
    rejected with a warning naming the client and the round goes on with the others. Clients with 0 examples
    (empty partitions) are reported and left out. If nothing is left, the global state is kept.

    Args:
        method: ``'fedavg'``, ``'ffa'`` or ``'exact'`` (see :mod:`opentad_lora.federated.aggregation`).
        param_names: Names of the exchanged LoRA tensors, in order.
        initial_arrays: The initial global state: LoRA tensors, then (``residual='base'``) one residual per layer.
        residual: ``'none'`` (exact drops what rank r cannot hold) or ``'base'`` (carried in the global state and
            folded into the clients' base weights).
        lora_a_digest: For FFA, the hash of the server's frozen A, sent to clients to check theirs.
        round_offset: Rounds already done (a resumed run): Flower counts from 1 again, every round this strategy
            sees, sends (``server_round`` of the fit config, which seeds the clients) and records is shifted by
            it, so round N + 1 of a resumed run is round N + 1 of an uninterrupted one.
        **kwargs: Of :class:`flwr.server.strategy.FedAvg` (``fraction_fit``, ``evaluate_fn``, ...).
    """

    def __init__(self, method: str, param_names: Sequence[str], initial_arrays: Sequence[np.ndarray],
                 residual: str = 'none', lora_a_digest: Optional[str] = None, round_offset: int = 0,
                 on_fit_config_fn: Optional[Callable[[int], Dict[str, Scalar]]] = None, **kwargs) -> None:
        self.method, self.residual, self.lora_a_digest = method, residual, lora_a_digest
        self.round_offset = int(round_offset)
        self.layout = LoRALayout(list(param_names))
        self.shapes = [tuple(a.shape) for a in initial_arrays[:len(param_names)]]
        self.user_fit_config_fn = on_fit_config_fn
        self.rounds: Dict[int, Dict[str, float]] = {}
        self.current = [np.asarray(a) for a in initial_arrays]
        super().__init__(initial_parameters=ndarrays_to_parameters(list(initial_arrays)),
                         on_fit_config_fn=self._fit_config, **kwargs)

    def _fit_config(self, server_round: int) -> Dict[str, Scalar]:
        config: Dict[str, Scalar] = dict(server_round=server_round)
        if self.lora_a_digest:
            config['lora_a_digest'] = self.lora_a_digest
        if self.user_fit_config_fn:
            config.update(self.user_fit_config_fn(server_round))
        return config

    def _record(self, server_round: int, **values: float) -> None:
        row = self.rounds.setdefault(server_round, dict(down_bytes=0, up_bytes=0))
        for key, value in values.items():
            row[key] = row.get(key, 0) + value

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> List[Tuple[ClientProxy, FitIns]]:
        server_round += self.round_offset
        instructions = super().configure_fit(server_round, parameters, client_manager)
        self._record(server_round, down_bytes=payload_bytes(parameters) * len(instructions))
        return instructions

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: ClientManager):
        server_round += self.round_offset
        instructions = super().configure_evaluate(server_round, parameters, client_manager)
        self._record(server_round, down_bytes=payload_bytes(parameters) * len(instructions))
        return instructions

    def evaluate(self, server_round: int, parameters: Parameters) -> Optional[Tuple[float, Dict[str, Scalar]]]:
        """The server-side evaluation (``evaluate_fn``) of the global state after ``server_round``."""
        return super().evaluate(server_round + self.round_offset, parameters)

    def validate(self, server_round: int, client: str, fit_res: FitRes) -> Optional[List[np.ndarray]]:
        """The client's arrays, or None (with a warning) if they are rejected or the client had no data."""
        if fit_res.num_examples == 0 or fit_res.metrics.get('empty_partition'):
            logger.warning('Round %d: client %s has an empty partition; left out of the aggregation.',
                           server_round, client)
            self._record(server_round, empty=1)
            return None
        try:
            arrays = parameters_to_ndarrays(fit_res.parameters)
            problem = check_arrays(arrays, self.shapes)
        except Exception as err:  # undecodable payload
            arrays, problem = None, f'payload cannot be decoded ({type(err).__name__}: {err})'
        if problem:
            logger.warning('Round %d: rejected the update of client %s: %s. The round continues with the others.',
                           server_round, client, problem)
            self._record(server_round, rejected=1)
            return None
        return arrays

    def aggregate_fit(self, server_round: int, results: List[Tuple[ClientProxy, FitRes]],
                      failures: List) -> Tuple[Optional[Parameters], Dict[str, Scalar]]:
        """Validate and aggregate the updates that came back; clients that failed or timed out are counted in
        ``failures`` and the round goes on with the others."""
        server_round += self.round_offset
        if failures:
            logger.warning('Round %d: %d client(s) failed or timed out (%s); aggregating the %d that answered.',
                           server_round, len(failures), '; '.join(_describe(f) for f in failures[:3]), len(results))
        accepted, counts, metrics = [], [], []
        for proxy, fit_res in results:
            self._record(server_round, up_bytes=payload_bytes(fit_res.parameters))
            client = str(fit_res.metrics.get('partition_id', proxy.cid))
            arrays = self.validate(server_round, client, fit_res)
            if arrays is not None:
                accepted.append(arrays)
                counts.append(fit_res.num_examples)
                metrics.append((fit_res.num_examples, fit_res.metrics))
        self._record(server_round, accepted=len(accepted), failures=len(failures))
        if not accepted:
            logger.warning('Round %d: no valid client update; the global LoRA state is unchanged.', server_round)
            return None, {}
        arrays, residuals = aggregate(self.method, accepted, counts, self.layout)
        if self.residual == 'base':
            previous = self.current[len(self.shapes):]
            arrays += [(old + residuals[layer]).astype(np.float32) for old, layer in zip(previous, self.layout.pairs)]
        self.current = arrays
        total = sum(counts)
        train_loss = sum(n * float(m.get('train_loss', 0.0)) for n, m in metrics) / total
        self._record(server_round, train_loss=train_loss)
        return ndarrays_to_parameters(arrays), dict(train_loss=train_loss, clients=len(accepted))

    def aggregate_evaluate(self, server_round: int, results: List[Tuple[ClientProxy, EvaluateRes]],
                           failures: List) -> Tuple[Optional[float], Dict[str, Scalar]]:
        """FedAvg's weighted loss over the clients that had data (empty partitions report 0 examples)."""
        server_round += self.round_offset
        results = [(proxy, res) for proxy, res in results if res.num_examples > 0]
        return super().aggregate_evaluate(server_round, results, failures) if results else (None, {})
