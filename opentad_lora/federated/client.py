"""Flower client: a ``NumPyClient`` that trains our model on its partition for E local epochs."""
import logging
import random
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from .params import get_parameters
from .task import FederatedTask, lora_a_digest

try:
    from flwr.client import NumPyClient
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError('Federated training needs Flower: pip install "flwr[simulation]" '
                      '(or pip install -e .[federated]).') from err

logger = logging.getLogger(__name__)


class LoRAClient(NumPyClient):
    """One client: its partition of the training set, the shared task, a (process-cached) model.

    Args:
        task: The experiment recipe.
        partition_id: This client's index.
        indices: Its training-sample indices (may be empty: it then reports ``empty_partition`` and sends the
            global arrays back with 0 examples, which the server leaves out of the average).
        dataset: The training set (built from the config when None).
        device: Where this client trains (``'cpu'``, ``'cuda:0'``...; a SuperNode's ``device`` node config).
    """

    def __init__(self, task: FederatedTask, partition_id: int, indices: Sequence[int], dataset=None,
                 device: str = 'cpu') -> None:
        self.task, self.partition_id, self.indices = task, int(partition_id), list(indices)
        self.model = task.build_model(cached=True).to(device)
        self.dataset = dataset
        self.num_lora = len(self.get_parameters({}))

    def get_parameters(self, config: Dict) -> List[np.ndarray]:
        return get_parameters(self.model)

    def _load(self, parameters: List[np.ndarray], config: Dict) -> None:
        expected = config.get('lora_a_digest')
        if expected and expected != lora_a_digest(self.model):
            raise ValueError(f"Client {self.partition_id}: its frozen LoRA A differs from the server's; FFA-LoRA "
                             "needs the same A everywhere: set the model's lora.seed.")
        self.task.load_global(self.model, parameters)

    def _seed(self, server_round: int, stream: int) -> int:
        """A seed fixed by (run seed, round, client, stream): reruns repeat, clients and rounds differ."""
        return int(np.random.SeedSequence([self.task.seed, server_round, self.partition_id, stream])
                   .generate_state(1)[0])

    def _data(self, shuffle: bool, server_round: int) -> torch.utils.data.DataLoader:
        if self.dataset is None:
            self.dataset = self.task.build_dataset('train')
        return self.task.loader(self.dataset, self.indices, shuffle=shuffle, seed=self._seed(server_round, 0))

    def fit(self, parameters: List[np.ndarray], config: Dict) -> Tuple[List[np.ndarray], int, Dict]:
        """Train ``local_epochs`` epochs from the global state; return the LoRA arrays and the sample count."""
        metrics = dict(partition_id=self.partition_id)
        if not self.indices:
            logger.warning('Client %d has an empty partition: it does not train this round.', self.partition_id)
            return list(parameters[:self.num_lora]), 0, dict(metrics, empty_partition=1)
        self._load(parameters, config)
        server_round = int(config.get('server_round', 0))
        seed = self._seed(server_round, 1)  # augmentation (numpy), dropout (torch): reruns repeat
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        metrics.update(self.task.train_local(self.model, self._data(True, server_round)))
        return self.get_parameters({}), len(self.indices), metrics

    def evaluate(self, parameters: List[np.ndarray], config: Dict) -> Tuple[float, int, Dict]:
        """Loss and accuracy of the global state on this client's partition."""
        if not self.indices:
            return 0.0, 0, dict(partition_id=self.partition_id, empty_partition=1)
        self._load(parameters, config)
        result = self.task.evaluate(self.model, self._data(False, 0))
        return result['loss'], result['num_samples'], dict(partition_id=self.partition_id, top1=result['top1'],
                                                           top5=result['top5'])
