"""Pure maths of temporal action detection evaluation (ActivityNet/THUMOS protocol as OpenTAD runs it), numpy only.

Detections of one class are ranked by score; each is matched greedily to the unmatched ground truth of the same
video with the highest tIoU, counting as a true positive when that tIoU reaches the threshold (one match per ground
truth, so duplicates are false positives). AP is the area under the precision/recall curve after making precision
monotone (non-increasing in recall).

Scores are rounded to 1e-4 and tIoUs often tie, so the ranking is done with the same numpy calls on the same
arrays in the same order as OpenTAD's evaluator (``argsort()[::-1]`` of the detections of a class in file order,
and of the tIoUs of the class's ground truth of the video in file order): ties are broken as there, and the same
detections give the same AP.
"""
from typing import Dict, List, NamedTuple, Sequence, Tuple

import numpy as np


class Detection(NamedTuple):
    """One detection in video seconds."""

    video: str
    start: float
    end: float
    label: str
    score: float


def segment_iou(segment: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Temporal IoU of one ``segment`` (2,) with every row of ``candidates`` (N, 2); unions clipped at 1e-8."""
    candidates = np.asarray(candidates, dtype=np.float64).reshape(-1, 2)
    inter = (np.minimum(segment[1], candidates[:, 1]) - np.maximum(segment[0], candidates[:, 0])).clip(0)
    union = (candidates[:, 1] - candidates[:, 0]) + (segment[1] - segment[0]) - inter
    return inter.astype(float) / union.clip(1e-8)


def interpolated_average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    """Area under the monotone (interpolated) precision envelope, over the recall steps.

    Args:
        precision: Precision after each ranked detection.
        recall: Recall after each ranked detection (non-decreasing).
    """
    mprec = np.concatenate([[0.0], precision, [0.0]])
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mprec = np.maximum.accumulate(mprec[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[steps] - mrec[steps - 1]) * mprec[steps]))


def _match(tiou: np.ndarray, by_tiou: np.ndarray, locked: np.ndarray, threshold: float) -> int:
    """Index of the ground truth a detection takes at ``threshold`` (-1: false positive); ``by_tiou`` ranks the
    ground truth by decreasing tIoU."""
    for gt_index in by_tiou:
        if tiou[gt_index] < threshold:
            return -1
        if not locked[gt_index]:
            return gt_index
    return -1


def average_precision_detection(gt_videos: Sequence[str], gt_segments: np.ndarray, det_videos: Sequence[str],
                                det_segments: np.ndarray, det_scores: np.ndarray,
                                tiou_thresholds: Sequence[float]) -> np.ndarray:
    """AP of one class at each tIoU threshold.

    Args:
        gt_videos, gt_segments: Video and ``(K, 2)`` segment of each ground truth of the class, in file order.
        det_videos, det_segments, det_scores: Video, ``(D, 2)`` segment and score of each detection of the class,
            in file order; videos without ground truth of the class make false positives.
        tiou_thresholds: Thresholds, e.g. ``(0.3, 0.4, 0.5, 0.6, 0.7)``.

    Returns:
        ``(len(tiou_thresholds),)`` APs; zeros when there is no ground truth or no detection.
    """
    thresholds = np.asarray(tiou_thresholds, dtype=np.float64)
    if len(gt_videos) == 0:
        return np.zeros(len(thresholds))
    gt_segments = np.asarray(gt_segments, dtype=np.float64).reshape(-1, 2)
    det_segments = np.asarray(det_segments, dtype=np.float64).reshape(-1, 2)
    rows_of_video: Dict[str, List[int]] = {}
    for row, video in enumerate(gt_videos):
        rows_of_video.setdefault(video, []).append(row)
    rows_of_video = {video: np.array(rows) for video, rows in rows_of_video.items()}
    locked = np.zeros((len(thresholds), len(gt_videos)), dtype=bool)
    true_pos = np.zeros((len(thresholds), len(det_videos)))
    for rank, det in enumerate(np.asarray(det_scores, dtype=np.float64).argsort()[::-1]):
        rows = rows_of_video.get(det_videos[det])
        if rows is None:
            continue
        tiou = segment_iou(det_segments[det], gt_segments[rows])
        by_tiou = tiou.argsort()[::-1]
        for t, threshold in enumerate(thresholds):
            taken = _match(tiou, by_tiou, locked[t, rows], threshold)
            if taken >= 0:
                locked[t, rows[taken]] = True
                true_pos[t, rank] = 1
    tp_cum = np.cumsum(true_pos, axis=1)
    fp_cum = np.cumsum(1 - true_pos, axis=1)
    recall = tp_cum / len(gt_videos)
    precision = tp_cum / (tp_cum + fp_cum)
    return np.array([interpolated_average_precision(precision[t], recall[t]) for t in range(len(thresholds))])


def mean_average_precision(ground_truth: Sequence, detections: Sequence,
                           tiou_thresholds: Sequence[float]) -> Tuple[List[str], np.ndarray, np.ndarray]:
    """Per-class AP table and its mean over the classes of the ground truth.

    Args:
        ground_truth: ``(video, start, end, label)`` instances (already cleaned), in file order.
        detections: ``(video, start, end, label, score)`` detections, in file order; labels absent from the ground
            truth are not evaluated.
        tiou_thresholds: tIoU thresholds.

    Returns:
        ``classes`` (ground-truth labels in order of first appearance), ``ap`` of shape
        ``(len(classes), len(tiou_thresholds))`` and ``mAP`` of shape ``(len(tiou_thresholds),)`` (zeros when there
        is no ground truth).
    """
    gt_of_class: Dict[str, list] = {}
    for inst in ground_truth:
        gt_of_class.setdefault(inst[3], []).append(inst)
    det_of_class: Dict[str, list] = {label: [] for label in gt_of_class}
    for det in detections:
        if det[3] in det_of_class:
            det_of_class[det[3]].append(det)
    classes = list(gt_of_class)
    ap = np.zeros((len(classes), len(tiou_thresholds)))
    for c, label in enumerate(classes):
        gts, dets = gt_of_class[label], det_of_class[label]
        ap[c] = average_precision_detection(
            [g[0] for g in gts], np.array([g[1:3] for g in gts], dtype=np.float64),
            [d[0] for d in dets], np.array([d[1:3] for d in dets], dtype=np.float64),
            np.array([d[4] for d in dets], dtype=np.float64), tiou_thresholds)
    mean_ap = np.ascontiguousarray(ap.T).mean(axis=1) if classes else np.zeros(len(tiou_thresholds))
    return classes, ap, mean_ap
