"""Hand-mesh metrics, pure numpy: similarity Procrustes, PA-MPJPE / PA-MPVPE and the FreiHAND F-score.

FreiHAND's official evaluator (used for HaMeR's FreiHAND numbers) aligns each prediction to its ground truth with a
similarity transform (scale, rotation, translation) found separately for the 21 keypoints and for the 778
vertices, reports the mean point error after alignment, and the F-score of the aligned vertices at 5 mm and 15 mm.
"""
from typing import Tuple

import numpy as np


def procrustes_transform(pred: np.ndarray, gt: np.ndarray) -> Tuple[float, np.ndarray, np.ndarray]:
    """The similarity ``(s, R, t)`` minimising ``sum ||s R pred_i + t - gt_i||^2`` (Umeyama; a proper rotation).

    Args:
        pred: ``(N, 3)`` points to align.
        gt: ``(N, 3)`` target points.

    Returns:
        ``(scale, rotation (3, 3), translation (3,))``.
    """
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    mu_p, mu_g = pred.mean(0), gt.mean(0)
    x, y = pred - mu_p, gt - mu_g
    u, sigma, vt = np.linalg.svd(x.T @ y)
    sign = np.ones(3)
    sign[-1] = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0
    rotation = vt.T @ np.diag(sign) @ u.T
    scale = float((sigma * sign).sum() / max((x ** 2).sum(), 1e-12))
    return scale, rotation, mu_g - scale * rotation @ mu_p


def procrustes_align(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """``pred`` after the similarity transform that best fits it onto ``gt``."""
    scale, rotation, translation = procrustes_transform(pred, gt)
    return scale * np.asarray(pred, np.float64) @ rotation.T + translation


def mean_point_error(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean Euclidean distance between corresponding points."""
    return float(np.linalg.norm(np.asarray(pred, np.float64) - np.asarray(gt, np.float64), axis=-1).mean())


def pa_error(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean point error after Procrustes alignment (PA-MPJPE on keypoints, PA-MPVPE on vertices)."""
    return mean_point_error(procrustes_align(pred, gt), gt)


def f_score(pred: np.ndarray, gt: np.ndarray, threshold: float) -> float:
    """F-score of two point sets at ``threshold``: harmonic mean of the share of predicted points within the
    threshold of some ground-truth point and the share of ground-truth points within it of some prediction."""
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    dist = np.linalg.norm(pred[:, None] - gt[None], axis=-1)
    precision = float((dist.min(1) < threshold).mean())
    recall = float((dist.min(0) < threshold).mean())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
