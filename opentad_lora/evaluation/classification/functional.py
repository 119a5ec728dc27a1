"""Pure classification maths shared by metrics and tests."""
from typing import Dict, Sequence

from torch import Tensor


def topk_accuracy(scores: Tensor, labels: Tensor, topk: Sequence[int] = (1, )) -> Dict[int, float]:
    """Percentage of samples whose label is among the ``k`` highest scores, for each ``k`` in ``topk``.

    Ties are broken by ``torch.topk`` (lower index first). ``k`` larger than the number of classes counts every
    sample as correct.

    Args:
        scores: (N, C) class scores or probabilities.
        labels: (N, ) integer labels.
        topk: The ``k`` values.
    """
    if scores.ndim != 2 or labels.shape != scores.shape[:1]:
        raise ValueError(f'Expected scores (N, C) and labels (N,), got {tuple(scores.shape)} and '
                         f'{tuple(labels.shape)}.')
    if scores.shape[0] == 0:
        raise ValueError('Accuracy of an empty set is undefined.')
    max_k = min(max(topk), scores.shape[1])
    top = scores.topk(max_k, dim=1).indices
    hits = top == labels.long()[:, None]
    return {k: float(hits[:, :min(k, max_k)].any(dim=1).float().mean() * 100) for k in topk}

