"""Top-k accuracy of a classifier's predictions."""
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from mmengine.evaluator import BaseMetric

from opentad_lora.registry import METRICS
from .functional import topk_accuracy


@METRICS.register_module()
class ClsAccuracy(BaseMetric):
    """Top-k accuracy in percent, logged as ``accuracy/top1``, ``accuracy/top5``...

    Each prediction (a data sample, as a dict after the evaluator's conversion) must hold ``pred_score`` (C,) and
    ``gt_label``. Named ``ClsAccuracy`` because other registries (mmpretrain) own ``Accuracy``.

    Args:
        topk: The ``k`` values.
        collect_device: Where results of all ranks are gathered (``'cpu'`` or ``'gpu'``).
        prefix: Key prefix (default ``'accuracy'``).
    """

    default_prefix: Optional[str] = 'accuracy'

    def __init__(self, topk: Union[int, Sequence[int]] = (1, ), collect_device: str = 'cpu',
                 prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.topk = (topk, ) if isinstance(topk, int) else tuple(topk)
        if not self.topk or min(self.topk) < 1:
            raise ValueError(f'topk must be positive integers, got {topk!r}.')

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            self.results.append(dict(pred_score=torch.as_tensor(sample['pred_score']).detach().cpu(),
                                     gt_label=int(torch.as_tensor(sample['gt_label']))))

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        scores = torch.stack([r['pred_score'] for r in results])
        labels = torch.tensor([r['gt_label'] for r in results])
        return {f'top{k}': acc for k, acc in topk_accuracy(scores, labels, self.topk).items()}
