"""Pure maths of temporal action detection evaluation (ActivityNet/THUMOS protocol), numpy only.

Detections of one class are sorted by score; each is matched greedily to the unmatched ground truth of the same
video with the highest tIoU, counting as a true positive when that tIoU reaches the threshold (one match per ground
truth, so duplicates are false positives). AP is the area under the precision/recall curve after making precision
monotone (non-increasing in recall), as ActivityNet's ``interpolated_prec_rec`` does.
"""
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np

# One detection of one class: (video id, start, end, score).
Detection = Tuple[str, float, float, float]


def segment_iou(segment: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Temporal IoU of one ``segment`` (2,) with every row of ``candidates`` (N, 2)."""
    candidates = np.asarray(candidates, dtype=np.float64).reshape(-1, 2)
    inter = np.clip(np.minimum(segment[1], candidates[:, 1]) - np.maximum(segment[0], candidates[:, 0]), 0, None)
    union = (segment[1] - segment[0]) + (candidates[:, 1] - candidates[:, 0]) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


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


def average_precision_detection(ground_truth: Mapping[str, np.ndarray], detections: Sequence[Detection],
                                tiou_thresholds: Sequence[float]) -> np.ndarray:
    """AP of one class at each tIoU threshold.

    Args:
        ground_truth: ``{video: (K, 2) segments}`` of this class.
        detections: Detections of this class, any order; videos missing from ``ground_truth`` are false positives.
        tiou_thresholds: Thresholds, e.g. ``(0.3, 0.4, 0.5, 0.6, 0.7)``.

    Returns:
        ``(len(tiou_thresholds),)`` APs; zeros when there is no ground truth or no detection.
    """
    thresholds = np.asarray(tiou_thresholds, dtype=np.float64)
    num_gt = sum(len(segs) for segs in ground_truth.values())
    if num_gt == 0 or len(detections) == 0:
        return np.zeros(len(thresholds))
    scores = np.array([det[3] for det in detections], dtype=np.float64)
    order = np.argsort(-scores, kind='stable')
    true_pos = np.zeros((len(thresholds), len(detections)))
    matched = {video: np.zeros((len(thresholds), len(segs)), dtype=bool) for video, segs in ground_truth.items()}
    for rank, index in enumerate(order):
        video, start, end, _ = detections[index]
        gt_segments = ground_truth.get(video)
        if gt_segments is None or len(gt_segments) == 0:
            continue
        tiou = segment_iou(np.array([start, end], dtype=np.float64), gt_segments)
        by_overlap = np.argsort(-tiou, kind='stable')
        for t, threshold in enumerate(thresholds):
            for gt_index in by_overlap:
                if tiou[gt_index] < threshold:
                    break
                if not matched[video][t, gt_index]:
                    matched[video][t, gt_index] = True
                    true_pos[t, rank] = 1
                    break
    tp_cum = np.cumsum(true_pos, axis=1)
    fp_cum = np.cumsum(1 - true_pos, axis=1)
    recall = tp_cum / num_gt
    precision = tp_cum / (tp_cum + fp_cum)
    return np.array([interpolated_average_precision(precision[t], recall[t]) for t in range(len(thresholds))])


def mean_average_precision(ground_truth: Mapping[int, Dict[str, np.ndarray]],
                           detections: Mapping[int, List[Detection]], num_classes: int,
                           tiou_thresholds: Sequence[float]) -> Tuple[np.ndarray, np.ndarray]:
    """Per-class AP table and its mean over the classes that have ground truth.

    Args:
        ground_truth: ``{class index: {video: (K, 2) segments}}``.
        detections: ``{class index: [detection, ...]}``.
        num_classes: Number of classes of the class map.
        tiou_thresholds: tIoU thresholds.

    Returns:
        ``ap`` of shape ``(num_classes, len(tiou_thresholds))`` (NaN rows for classes without ground truth, which
        ActivityNet's evaluation leaves out of the mean) and ``mAP`` of shape ``(len(tiou_thresholds),)``.
    """
    ap = np.full((num_classes, len(tiou_thresholds)), np.nan)
    for cls in range(num_classes):
        gt_cls = ground_truth.get(cls, {})
        if sum(len(segs) for segs in gt_cls.values()) > 0:
            ap[cls] = average_precision_detection(gt_cls, detections.get(cls, []), tiou_thresholds)
    present = ~np.isnan(ap[:, 0])
    mean_ap = ap[present].mean(axis=0) if present.any() else np.zeros(len(tiou_thresholds))
    return ap, mean_ap
