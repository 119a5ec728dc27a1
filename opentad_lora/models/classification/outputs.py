"""What a classifier returns for each MMEngine ``forward`` mode, shared by every classifier (ViT, CLIP)."""
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from mmengine.structures import BaseDataElement
from torch import Tensor


def classification_outputs(logits: Tensor, data_samples: Optional[Sequence[BaseDataElement]], mode: str,
                           label_smoothing: float = 0.0
                           ) -> Union[Tensor, Dict[str, Tensor], List[BaseDataElement]]:
    """``'tensor'``: the logits (B, C); ``'loss'``: ``dict(loss=cross_entropy)`` against the samples' ``gt_label``;
    ``'predict'``: one data sample per image with ``pred_score`` (softmax) and ``pred_label`` (inputs' fields kept).
    """
    if mode == 'tensor':
        return logits
    if mode == 'loss':
        if not data_samples:
            raise ValueError("mode='loss' needs data_samples carrying gt_label.")
        labels = torch.stack([s.gt_label for s in data_samples]).to(logits.device).reshape(-1)
        return dict(loss=F.cross_entropy(logits, labels, label_smoothing=label_smoothing))
    if mode == 'predict':
        scores = logits.float().softmax(dim=1)
        samples = list(data_samples) if data_samples else [BaseDataElement() for _ in range(len(logits))]
        for sample, score in zip(samples, scores):
            sample.pred_score = score
            sample.pred_label = score.argmax()
        return samples
    raise ValueError(f"mode must be 'tensor', 'loss' or 'predict', got {mode!r}.")
