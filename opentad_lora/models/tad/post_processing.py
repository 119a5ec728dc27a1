"""Detection post-processing in plain PyTorch: temporal NMS, Gaussian soft-NMS, score voting, window merging.

No compiled op is needed: segments are 1-D, so one greedy loop over the kept detections with vectorised IoU rows is
fast enough for thousands of candidates per video.
"""
from collections import defaultdict
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import torch
from torch import Tensor

from opentad_lora.registry import TASK_UTILS


def pairwise_tiou(segments_a: Tensor, segments_b: Tensor) -> Tensor:
    """Temporal IoU matrix ``(N, M)`` of segments ``(N, 2)`` and ``(M, 2)`` given as (start, end)."""
    inter = (torch.minimum(segments_a[:, None, 1], segments_b[None, :, 1]) -
             torch.maximum(segments_a[:, None, 0], segments_b[None, :, 0])).clamp(min=0)
    length_a = (segments_a[:, 1] - segments_a[:, 0]).clamp(min=0)
    length_b = (segments_b[:, 1] - segments_b[:, 0]).clamp(min=0)
    union = length_a[:, None] + length_b[None, :] - inter
    return inter / union.clamp(min=1e-8)


def nms(segments: Tensor, scores: Tensor, iou_threshold: float, max_num: int = -1) -> Tensor:
    """Greedy hard NMS: indices of the kept segments, by decreasing score (at most ``max_num`` when > 0).

    A segment is removed when its tIoU with an already kept, higher-scored segment exceeds ``iou_threshold``.
    """
    order = scores.argsort(descending=True, stable=True)
    keep = []
    while order.numel() > 0 and (max_num <= 0 or len(keep) < max_num):
        best = order[0]
        keep.append(best)
        ious = pairwise_tiou(segments[best][None], segments[order[1:]])[0]
        order = order[1:][ious <= iou_threshold]
    return torch.stack(keep) if keep else scores.new_zeros(0, dtype=torch.long)


def soft_nms(segments: Tensor, scores: Tensor, sigma: float, min_score: float,
             max_num: int = -1) -> Tuple[Tensor, Tensor]:
    """Gaussian soft-NMS (Bodla et al., 2017): decay instead of removing.

    Repeatedly takes the highest remaining score and multiplies every other remaining score by
    ``exp(-iou^2 / sigma)`` (so disjoint segments are untouched), until the best remaining score is below
    ``min_score`` or ``max_num`` segments (when > 0) are taken.

    Returns:
        ``(indices, new_scores)`` of the kept segments, in the order they were selected (decreasing score).
    """
    current = scores.clone().float()
    keep, keep_scores = [], []
    while max_num <= 0 or len(keep) < max_num:
        best = int(current.argmax()) if current.numel() else -1
        if best < 0 or current[best] < min_score:
            break
        keep.append(best)
        keep_scores.append(current[best].clone())
        ious = pairwise_tiou(segments[best][None], segments)[0]
        current.mul_(torch.exp(-ious.pow(2) / sigma))
        current[best] = float('-inf')
    if not keep:
        return scores.new_zeros(0, dtype=torch.long), scores.new_zeros(0)
    return torch.tensor(keep, dtype=torch.long, device=scores.device), torch.stack(keep_scores)


def score_voting(kept: Tensor, candidates: Tensor, candidate_scores: Tensor, iou_threshold: float,
                 score_offset: float = 1.5) -> Tensor:
    """Refine kept boundaries as the average of overlapping candidates (ActionFormer's ``seg_voting``).

    Each kept segment becomes the mean of the candidates whose tIoU with it is at least ``iou_threshold``,
    weighted by ``tiou * (score + score_offset)``; it always votes for itself, so the weights never vanish.
    """
    ious = pairwise_tiou(kept, candidates)
    weights = torch.where(ious >= iou_threshold, ious, torch.zeros_like(ious)) * (candidate_scores + score_offset)
    return weights @ candidates / weights.sum(dim=1, keepdim=True).clamp(min=1e-8)


@TASK_UTILS.register_module()
class TADPostProcessor:
    """Per-video post-processing of detections pooled from all windows of the video.

    Args:
        nms: ``dict(use_soft_nms=True, sigma=0.5, iou_threshold=0.1, min_score=0.001, max_seg_num=2000,
            multiclass=True, voting_thresh=0.7)`` (OpenTAD's keys). ``use_soft_nms=False`` runs hard NMS at
            ``iou_threshold``; ``multiclass`` runs NMS per class (else class-agnostic); ``voting_thresh > 0``
            refines boundaries by score voting; ``max_seg_num`` keeps the best segments of the video.
    """

    def __init__(self, nms: Optional[Mapping] = None) -> None:
        cfg = dict(use_soft_nms=True, sigma=0.5, iou_threshold=0.1, min_score=0.001, max_seg_num=2000,
                   multiclass=True, voting_thresh=0.0)
        unknown = set(nms or {}) - set(cfg)
        if unknown:
            raise KeyError(f'TADPostProcessor: unknown nms keys {sorted(unknown)}; expected {sorted(cfg)}')
        cfg.update(nms or {})
        self.cfg = cfg

    def _suppress(self, segments: Tensor, scores: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """``(kept indices, kept segments, kept scores)`` of one NMS group."""
        cfg = self.cfg
        if cfg['use_soft_nms']:
            keep, kept_scores = soft_nms(segments, scores, cfg['sigma'], cfg['min_score'], cfg['max_seg_num'])
        else:
            keep = nms(segments, scores, cfg['iou_threshold'], cfg['max_seg_num'])
            kept_scores = scores[keep]
        kept = segments[keep]
        if cfg['voting_thresh'] > 0 and keep.numel() > 0:
            kept = score_voting(kept, segments, scores, cfg['voting_thresh'])
        return keep, kept, kept_scores

    def __call__(self, segments: Tensor, scores: Tensor, labels: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Suppress duplicates among ``segments (N, 2)``; returns the kept segments, scores and labels."""
        valid = scores >= self.cfg['min_score']
        segments, scores, labels = segments[valid].float(), scores[valid].float(), labels[valid]
        if self.cfg['multiclass']:
            groups = [(labels == label).nonzero()[:, 0] for label in labels.unique()]
        else:
            groups = [torch.arange(labels.numel(), device=labels.device)]
        out_segments, out_scores, out_labels = [segments[:0]], [scores[:0]], [labels[:0]]
        for index in groups:
            keep, kept, kept_scores = self._suppress(segments[index], scores[index])
            out_segments.append(kept)
            out_scores.append(kept_scores)
            out_labels.append(labels[index][keep])
        segments, scores, labels = torch.cat(out_segments), torch.cat(out_scores), torch.cat(out_labels)
        order = scores.argsort(descending=True, stable=True)[:self.cfg['max_seg_num']]
        return segments[order], scores[order], labels[order]


def merge_windows(predictions: Iterable[Mapping]) -> Dict[str, Dict[str, Tensor]]:
    """Pool per-window predictions by video.

    Args:
        predictions: Dicts with ``video_name`` and ``pred_segments`` (seconds, video time), ``pred_scores`` and
            ``pred_labels`` of one window each.

    Returns:
        ``{video_name: dict(segments, scores, labels)}`` with the windows of each video concatenated.
    """
    pooled: Dict[str, List[Mapping]] = defaultdict(list)
    for pred in predictions:
        pooled[pred['video_name']].append(pred)
    merged = {}
    for video, parts in pooled.items():
        merged[video] = dict(
            segments=torch.cat([torch.as_tensor(p['pred_segments'], dtype=torch.float32).reshape(-1, 2)
                                for p in parts]),
            scores=torch.cat([torch.as_tensor(p['pred_scores'], dtype=torch.float32).reshape(-1) for p in parts]),
            labels=torch.cat([torch.as_tensor(p['pred_labels'], dtype=torch.long).reshape(-1) for p in parts]))
    return merged
