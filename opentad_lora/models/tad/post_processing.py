"""Detection post-processing as OpenTAD does it: 1-D (soft-)NMS, class-agnostic score voting, window merging.

OpenTAD stores each window's detections with segments rounded to 1e-2 s and scores to 1e-4, pools the windows of
a video, runs ``batched_nms`` on them and rounds the result again. Rounded scores tie often, so the order in which
ties are broken decides which segments survive; the functions here follow OpenTAD's order exactly:

* soft-NMS takes the first highest score of its working array, swaps it to the front, decays the rest and moves
  the last entry into the place of any entry that falls under ``min_score`` (its compiled op's array discipline);
* overlaps add ``1e-6`` to every length, and everything is float32 as in that op;
* multiclass NMS runs per class in the order the classes first appear, with no voting (OpenTAD disables it
  there); class-agnostic NMS may vote; the final ranking uses the same (unstable) ``torch.sort``.

No compiled op is needed: each selection is one vectorised numpy step over the remaining candidates (only the
overlapping ones are decayed: a disjoint one has weight exactly 1), several times faster than OpenTAD's op when
``min_score`` is 0 and it visits every candidate.
"""
from collections import defaultdict
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from opentad_lora.registry import TASK_UTILS

LENGTH_EPS = 1e-6  # added to every segment length in (soft-)NMS overlaps, as OpenTAD's op does


def pairwise_tiou(segments_a: Tensor, segments_b: Tensor) -> Tensor:
    """Temporal IoU matrix ``(N, M)`` of segments ``(N, 2)`` and ``(M, 2)`` given as (start, end)."""
    inter = (torch.minimum(segments_a[:, None, 1], segments_b[None, :, 1]) -
             torch.maximum(segments_a[:, None, 0], segments_b[None, :, 0])).clamp(min=0)
    length_a = (segments_a[:, 1] - segments_a[:, 0]).clamp(min=0)
    length_b = (segments_b[:, 1] - segments_b[:, 0]).clamp(min=0)
    union = length_a[:, None] + length_b[None, :] - inter
    return inter / union.clamp(min=1e-8)


def round_half_even(values: Tensor, decimals: int) -> Tensor:
    """Python's ``round(x, decimals)`` on every float32 value, as float64.

    A float32 times ``10**decimals`` (decimals <= 4) is exact in float64, so ``rint`` then one division gives the
    same double as Python's correctly rounded ``round`` (OpenTAD rounds with ``round(x.item(), d)``).
    """
    scale = 10.0 ** decimals
    return torch.from_numpy(np.rint(values.double().numpy() * scale) / scale)


def _overlaps_with_eps(x1: np.ndarray, x2: np.ndarray, length: np.ndarray, i: int, rest) -> np.ndarray:
    """float32 overlap of candidate ``i`` with candidates ``rest``; lengths already carry ``LENGTH_EPS``."""
    inter = np.maximum(np.float32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
    return inter / (length[i] + length[rest] - inter)


def _decay(overlap: np.ndarray, method: int, sigma: float, iou_threshold: float, t1: float, t2: float,
           length: np.float32) -> np.ndarray:
    """Soft-NMS weights: 0 vanilla, 1 linear, 2 Gaussian, 3 Gaussian above ``t1 + t2 * length`` (BMN)."""
    if method == 2:
        return np.exp((-(overlap * overlap) / np.float32(sigma)).astype(np.float64)).astype(np.float32)
    weight = np.ones_like(overlap)
    if method == 0:
        weight[overlap >= np.float32(iou_threshold)] = 0
    elif method == 1:
        hit = overlap >= np.float32(iou_threshold)
        weight[hit] = 1 - overlap[hit]
    elif method == 3:
        hit = overlap >= np.float32(t1) + np.float32(t2) * length
        weight[hit] = np.exp((-(overlap[hit] * overlap[hit]) / np.float32(sigma)).astype(np.float64))
    return weight


def soft_nms(segments: Tensor, scores: Tensor, sigma: float = 0.5, min_score: float = 0.0, max_num: int = -1,
             method: int = 2, iou_threshold: float = 0.0, t1: float = 0.0, t2: float = 0.0) -> Tuple[Tensor, Tensor]:
    """Soft-NMS (Bodla et al., 2017): decay the scores of the others instead of removing them.

    Each step takes the highest remaining score (the first one on ties), moves it to the front, multiplies every
    later score by the decay of its overlap with it and drops those that fall under ``min_score`` (the selected one
    is never checked). Stops when nothing remains or ``max_num`` (when > 0) segments are taken.

    Returns:
        ``(indices, new_scores)`` of the kept segments, in selection order.
    """
    x1 = segments[:, 0].float().numpy().copy()
    x2 = segments[:, 1].float().numpy().copy()
    score = scores.float().numpy().copy()
    length = (segments[:, 1].float() - segments[:, 0].float() + LENGTH_EPS).numpy().copy()
    index = np.arange(len(score))
    columns = (x1, x2, score, length, index)
    count, limit = len(score), (max_num if max_num > 0 else len(score))
    i = 0
    while i < count and i < limit:
        best = i + int(np.argmax(score[i:count]))
        for column in columns:
            column[[i, best]] = column[[best, i]]
        if method == 0 and iou_threshold <= 0:  # every other segment is removed, overlapping or not
            rest = np.arange(i + 1, count)
        else:  # a disjoint segment has overlap 0, hence weight 1: decay only the overlapping ones
            rest = np.flatnonzero((x1[i + 1:count] < x2[i]) & (x2[i + 1:count] > x1[i])) + i + 1
        overlap = _overlaps_with_eps(x1, x2, length, i, rest)
        score[rest] *= _decay(overlap, method, sigma, iou_threshold, t1, t2, length[i])
        dropped = np.flatnonzero(score[i + 1:count] < np.float32(min_score)) + i + 1
        if dropped.size:
            # the op fills each dropped place (front to back) with the last entry still above min_score
            count_left = count - dropped.size
            holes = dropped[dropped < count_left]
            movers = np.setdiff1d(np.arange(count_left, count), dropped)[::-1]
            for column in columns:
                column[holes] = column[movers]
            count = count_left
        i += 1
    return torch.from_numpy(index[:i].copy()), torch.from_numpy(score[:i].copy())


def nms(segments: Tensor, scores: Tensor, iou_threshold: float, max_num: int = -1,
        min_score: float = 0.0) -> Tensor:
    """Greedy hard NMS: indices of the kept segments, by decreasing score (at most ``max_num`` when > 0).

    Candidates at or under ``min_score`` (when > 0) are dropped first; a segment is removed when its overlap
    (with ``LENGTH_EPS`` lengths) with an already kept, higher-ranked one reaches ``iou_threshold``.
    """
    candidates = torch.arange(scores.numel())
    if min_score > 0:
        candidates = candidates[scores > min_score]
    order = candidates[scores[candidates].float().sort(descending=True)[1]].numpy()
    x1 = segments[order, 0].float().numpy()
    x2 = segments[order, 1].float().numpy()
    length = (segments[order, 1].float() - segments[order, 0].float() + LENGTH_EPS).numpy()
    alive = np.ones(len(order), dtype=bool)
    for i in range(len(order)):
        if alive[i]:
            rest = slice(i + 1, len(order))
            alive[rest] &= _overlaps_with_eps(x1, x2, length, i, rest) < np.float32(iou_threshold)
    keep = torch.from_numpy(order[alive].copy())
    return keep[:max_num] if max_num > 0 else keep


def score_voting(kept: Tensor, candidates: Tensor, candidate_scores: Tensor, iou_threshold: float) -> Tensor:
    """Refine kept boundaries as OpenTAD's ``seg_voting``: the score-weighted mean of the candidates whose tIoU with
    the kept segment reaches ``iou_threshold``.

    A kept segment that no candidate reaches (a zero-length one) keeps its boundaries; OpenTAD divides by zero
    there (NaN boundaries).
    """
    weights = (pairwise_tiou(kept, candidates) >= iou_threshold).to(candidate_scores.dtype) * candidate_scores[None]
    total = weights.sum(dim=1, keepdim=True)
    refined = (weights / torch.where(total > 0, total, torch.ones_like(total))) @ candidates
    return torch.where(total > 0, refined, kept)


def _first_appearance_groups(labels: Tensor) -> List[Tensor]:
    """Indices of each label, labels taken in the order they first appear (OpenTAD's class order per video)."""
    values, first = np.unique(labels.numpy(), return_index=True)
    return [(labels == int(values[k])).nonzero()[:, 0] for k in np.argsort(first, kind='stable')]


@TASK_UTILS.register_module()
class TADPostProcessor:
    """Per-video post-processing of detections pooled from all windows of the video, as OpenTAD's test does.

    Inputs are rounded as OpenTAD stores each window (``segment_decimals``, ``score_decimals``; None keeps them),
    suppressed by ``batched_nms`` semantics and rounded again.

    Args:
        nms: OpenTAD's ``batched_nms`` keys: ``dict(use_soft_nms=True, sigma=0.5, max_seg_num=100,
            multiclass=True, voting_thresh=0.0, iou_threshold=0.0, min_score=0.0, method=2, t1=0.0, t2=0.0)``
            (its defaults). ``use_soft_nms=False`` runs hard NMS at ``iou_threshold``; ``multiclass`` runs NMS per
            class (then voting is off, as in OpenTAD), else class-agnostic with voting when
            ``voting_thresh > 0``; ``max_seg_num`` caps each class and the video.
        segment_decimals: Decimals of segment boundaries (seconds) before and after NMS.
        score_decimals: Decimals of scores before and after NMS.
    """

    def __init__(self, nms: Optional[Mapping] = None, segment_decimals: Optional[int] = 2,
                 score_decimals: Optional[int] = 4) -> None:
        cfg = dict(use_soft_nms=True, sigma=0.5, max_seg_num=100, multiclass=True, voting_thresh=0.0,
                   iou_threshold=0.0, min_score=0.0, method=2, t1=0.0, t2=0.0)
        unknown = set(nms or {}) - set(cfg)
        if unknown:
            raise KeyError(f'TADPostProcessor: unknown nms keys {sorted(unknown)}; expected {sorted(cfg)}')
        cfg.update(nms or {})
        if cfg['method'] not in (0, 1, 2, 3):
            raise ValueError(f'TADPostProcessor: nms method must be 0, 1, 2 or 3, got {cfg["method"]!r}')
        self.cfg = cfg
        self.segment_decimals = segment_decimals
        self.score_decimals = score_decimals

    def _round(self, segments: Tensor, scores: Tensor) -> Tuple[Tensor, Tensor]:
        if self.segment_decimals is not None:
            segments = round_half_even(segments, self.segment_decimals)
        if self.score_decimals is not None:
            scores = round_half_even(scores, self.score_decimals)
        return segments, scores

    def _suppress(self, segments: Tensor, scores: Tensor) -> Tuple[Tensor, Tensor]:
        """``(kept indices, kept scores)`` of one NMS group, in OpenTAD's order."""
        cfg = self.cfg
        if cfg['use_soft_nms']:
            return soft_nms(segments, scores, cfg['sigma'], cfg['min_score'], cfg['max_seg_num'], cfg['method'],
                            cfg['iou_threshold'], cfg['t1'], cfg['t2'])
        keep = nms(segments, scores, cfg['iou_threshold'], cfg['max_seg_num'], cfg['min_score'])
        return keep, scores[keep]

    def __call__(self, segments: Tensor, scores: Tensor, labels: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Suppress duplicates among ``segments (N, 2)``; returns the kept segments, scores (float64, rounded)
        and labels, by decreasing score."""
        segments, scores = self._round(segments.detach().cpu().float(), scores.detach().cpu().float())
        segments, scores, labels = segments.float(), scores.float(), labels.detach().cpu()
        groups = (_first_appearance_groups(labels) if self.cfg['multiclass'] else
                  [torch.arange(labels.numel())])
        out_segments, out_scores, out_labels = [segments[:0]], [scores[:0]], [labels[:0]]
        for index in groups:
            keep, kept_scores = self._suppress(segments[index], scores[index])
            kept = segments[index][keep]
            if not self.cfg['multiclass'] and self.cfg['voting_thresh'] > 0 and keep.numel() > 0:
                kept = score_voting(kept, segments, scores, self.cfg['voting_thresh'])
            out_segments.append(kept)
            out_scores.append(kept_scores)
            out_labels.append(labels[index][keep])
        segments, scores, labels = torch.cat(out_segments), torch.cat(out_scores), torch.cat(out_labels)
        order = scores.sort(descending=True)[1][:self.cfg['max_seg_num']]
        segments, scores = self._round(segments[order], scores[order])
        return segments, scores, labels[order]


def merge_windows(predictions: Iterable[Mapping]) -> Dict[str, Dict[str, Tensor]]:
    """Pool per-window predictions by video, videos and windows in the order they come.

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
