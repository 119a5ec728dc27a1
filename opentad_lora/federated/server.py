"""The server's side of a federated run, the same under simulation and deployment: evaluate the global model on the
server's test set after every round, save the global adapter every round, keep ``history.json`` up to date, and
resume from the last saved round.

Under ``work_dir``: ``adapters/round_XXX/`` (PEFT adapter files of the global model; ``residual.npz`` too with
``residual='base'``), ``history.json`` (one row per round, rewritten atomically after each round) and, at the end,
``accuracy.png``.
"""
import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from opentad_lora.fileio import atomic_open
from opentad_lora.peft import load_adapter, save_adapter
from .params import get_parameter_names
from .report import plot_accuracy
from .task import FederatedTask

logger = logging.getLogger(__name__)
ROW_COUNTS = ('accepted', 'rejected', 'empty', 'failures')


class ServerRun:
    """The global model, its evaluation and what is written each round.

    Args:
        task: The experiment recipe.
        work_dir: Output folder.
        resume: Continue from the last round recorded in ``work_dir/history.json`` (its adapter, and residuals, are
            loaded as the global state); the run then does the config's ``num_rounds`` minus the rounds done.

    Attributes:
        start_round: Rounds already done (0 for a fresh run).
        initial_arrays: The global state the first round starts from.
        strategy: Set by the caller; its per-round traffic records fill the history rows.
    """

    def __init__(self, task: FederatedTask, work_dir: str, resume: bool = False) -> None:
        self.task, self.work = task, Path(work_dir)
        (self.work / 'adapters').mkdir(parents=True, exist_ok=True)
        self.model = task.build_model()
        self.names = get_parameter_names(self.model)
        self.test_loader = task.loader(task.build_dataset('test'))
        self.rows: List[Dict[str, Any]] = []
        self.start_round, residuals = 0, None
        if resume:
            self.start_round, self.rows, residuals = self._load_last_round()
        self.initial_arrays = task.global_state(self.model, residuals)
        self.strategy: Any = None

    @property
    def history_path(self) -> Path:
        return self.work / 'history.json'

    def adapter_dir(self, server_round: int) -> Path:
        return self.work / 'adapters' / f'round_{server_round:03d}'

    def _load_last_round(self) -> Tuple[int, List[Dict[str, Any]], Optional[Dict[str, np.ndarray]]]:
        """``(last round, its history rows, residuals)``; the model gets that round's adapter.

        Raises:
            FileNotFoundError: naming the history or adapter file that a resume needs.
        """
        if not self.history_path.is_file():
            raise FileNotFoundError(f'Cannot resume: {self.history_path} does not exist (no round was finished in '
                                    f'{self.work}); start the run without resume.')
        rows = json.loads(self.history_path.read_text())
        last = int(rows[-1]['round'])
        folder = self.adapter_dir(last)
        load_adapter(self.model, folder)
        residuals = None
        if self.task.residual == 'base':
            layers = list(self.task.layout(self.model).pairs)
            with np.load(folder / 'residual.npz') as saved:
                if sorted(saved.files) != sorted(layers):
                    raise ValueError(f'{folder / "residual.npz"} does not hold one residual per LoRA layer of the '
                                     'config; resume with the config the run started with.')
                residuals = {layer: saved[layer] for layer in layers}
        logger.info('Resuming from round %d (%s).', last, folder)
        return last, rows, residuals

    def evaluate(self, server_round: int, arrays: List[np.ndarray], config: Dict) -> Tuple[float, Dict[str, float]]:
        """Flower's ``evaluate_fn``: test the global state, save its adapter and record the round."""
        self.task.load_global(self.model, arrays)
        result = self.task.evaluate(self.model, self.test_loader)
        logger.info('Round %d: global top-1 %.2f%%, top-5 %.2f%%, loss %.4f', server_round, result['top1'],
                    result['top5'], result['loss'])
        if not any(row['round'] == server_round for row in self.rows):  # a resumed run's first round is on file
            folder = save_adapter(self.model, self.adapter_dir(server_round))
            if self.task.residual == 'base':
                pairs = self.task.layout(self.model).pairs
                np.savez(folder / 'residual.npz', **dict(zip(pairs, arrays[len(self.names):])))
            self._record(server_round, result)
        return result['loss'], dict(top1=result['top1'], top5=result['top5'])

    def _record(self, server_round: int, result: Dict[str, float]) -> None:
        comm = self.strategy.rounds.get(server_round, {}) if self.strategy is not None else {}
        traffic = comm.get('up_bytes', 0) + comm.get('down_bytes', 0)
        cumulative = (self.rows[-1]['cum_bytes'] if self.rows else 0) + traffic
        self.rows.append(dict(round=server_round, **{k: result[k] for k in ('top1', 'top5', 'loss')},
                              train_loss=comm.get('train_loss'), up_bytes=comm.get('up_bytes', 0),
                              down_bytes=comm.get('down_bytes', 0), cum_bytes=cumulative,
                              **{k: comm.get(k, 0) for k in ROW_COUNTS}))
        with atomic_open(self.history_path, 'w', encoding='utf-8') as handle:
            json.dump(self.rows, handle, indent=2)

    def finish(self, title: str) -> List[Dict[str, Any]]:
        """Plot ``accuracy.png`` and return the rows."""
        plot_accuracy(self.rows, self.work / 'accuracy.png', title=title)
        return self.rows
