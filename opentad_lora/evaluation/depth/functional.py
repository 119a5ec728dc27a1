"""Depth-evaluation maths: scale(-and-shift) alignment and the standard error/accuracy metrics.

The protocol is Marigold's (ETH3D, NYUv2, ...): a prediction of unknown scale (and shift) is first aligned to the
ground truth on the valid pixels, clipped to a positive minimum, and then compared pixel-wise. Metrics are computed
per image; averaging over images or scenes is the caller's job (:class:`DepthMetric`).
"""
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

ALIGNMENTS = ('least_squares', 'median', 'none')
METRIC_NAMES = ('abs_rel', 'sq_rel', 'mae', 'rmse', 'rmse_log', 'log10', 'silog', 'irmse', 'delta1', 'delta2',
                'delta3')


def valid_depth_mask(gt: Tensor, mask: Optional[Tensor] = None, min_depth: float = 1e-5,
                     max_depth: float = float('inf')) -> Tensor:
    """Pixels with a finite ground truth in ``[min_depth, max_depth]`` (and in ``mask`` when given)."""
    valid = torch.isfinite(gt) & (gt >= min_depth) & (gt <= max_depth)
    if mask is not None:
        valid &= mask.bool()
    return valid


def least_squares_scale_shift(pred: Tensor, gt: Tensor, mask: Tensor) -> Tuple[float, float]:
    """``(s, t)`` minimising ``sum_mask (s * pred + t - gt)^2`` (the normal equations, solved in float64).

    Raises:
        ValueError: if fewer than two valid pixels are given or the prediction is constant on them.
    """
    x = pred[mask].double()
    y = gt[mask].double()
    if x.numel() < 2:
        raise ValueError(f'Least-squares alignment needs at least 2 valid pixels, got {x.numel()}.')
    x_mean, y_mean = x.mean(), y.mean()
    var = ((x - x_mean) ** 2).sum()
    if var <= 0:
        raise ValueError('Least-squares alignment is undefined: the prediction is constant on the valid pixels.')
    scale = ((x - x_mean) * (y - y_mean)).sum() / var
    return float(scale), float(y_mean - scale * x_mean)


def median_scale(pred: Tensor, gt: Tensor, mask: Tensor) -> float:
    """``median(gt) / median(pred)`` over ``mask`` (the scale-only alignment of monocular-depth papers)."""
    x = pred[mask].double()
    if x.numel() == 0:
        raise ValueError('Median scaling needs at least 1 valid pixel.')
    denominator = x.median()
    if denominator <= 0:
        raise ValueError(f'Median scaling needs a positive median prediction, got {float(denominator)}.')
    return float(gt[mask].double().median() / denominator)


def align_depth(pred: Tensor, gt: Tensor, mask: Tensor,
                alignment: str = 'least_squares') -> Tuple[Tensor, float, float]:
    """Return ``(s * pred + t, s, t)`` with ``(s, t)`` fitted on ``mask`` by ``alignment``.

    Args:
        pred: Predicted depth, any shape.
        gt: Ground-truth depth, same shape.
        mask: Valid pixels (bool), same shape; the fit uses only these.
        alignment: ``'least_squares'`` (scale and shift), ``'median'`` (scale only) or ``'none'``.
    """
    if alignment == 'least_squares':
        scale, shift = least_squares_scale_shift(pred, gt, mask)
    elif alignment == 'median':
        scale, shift = median_scale(pred, gt, mask), 0.0
    elif alignment == 'none':
        scale, shift = 1.0, 0.0
    else:
        raise ValueError(f'Unknown depth alignment {alignment!r}; use one of {ALIGNMENTS}.')
    return pred.double() * scale + shift, scale, shift


def depth_error_metrics(pred: Tensor, gt: Tensor, mask: Tensor) -> Dict[str, float]:
    """Error and accuracy metrics over ``mask`` (Marigold's list plus the seed's MAE), ``d`` = pred, ``g`` = gt:

    AbsRel ``mean |d-g|/g``, SqRel ``mean (d-g)^2/g``, MAE ``mean |d-g|`` (depth units), RMSE, RMSE-log
    ``sqrt(mean (ln d - ln g)^2)``, log10 ``mean |log10 d - log10 g|``, SILog ``100 sqrt(mean e^2 - (mean e)^2)``
    with ``e = ln d - ln g``, i-RMSE ``sqrt(mean (1/d - 1/g)^2)`` and the accuracies δ<1.25^k (k=1,2,3).
    ``pred`` must already be aligned and positive on ``mask`` (see :func:`compute_depth_metrics`).
    """
    x = pred[mask].double()
    y = gt[mask].double()
    if x.numel() == 0:
        raise ValueError('No valid pixel to evaluate.')
    diff = x - y
    log_diff = x.log() - y.log()
    ratio = torch.maximum(x / y, y / x)
    return dict(
        abs_rel=float((diff.abs() / y).mean()),
        sq_rel=float((diff ** 2 / y).mean()),
        mae=float(diff.abs().mean()),
        rmse=float(diff.pow(2).mean().sqrt()),
        rmse_log=float(log_diff.pow(2).mean().sqrt()),
        log10=float((x.log10() - y.log10()).abs().mean()),
        silog=float(100 * (log_diff.pow(2).mean() - log_diff.mean() ** 2).clamp(min=0).sqrt()),
        irmse=float((1 / x - 1 / y).pow(2).mean().sqrt()),
        delta1=float((ratio < 1.25).double().mean()),
        delta2=float((ratio < 1.25 ** 2).double().mean()),
        delta3=float((ratio < 1.25 ** 3).double().mean()),
    )


def compute_depth_metrics(pred: Tensor, gt: Tensor, mask: Optional[Tensor] = None, alignment: str = 'least_squares',
                          min_depth: float = 1e-5, max_depth: float = float('inf')) -> Dict[str, float]:
    """Align ``pred`` to ``gt`` on the valid pixels, clip it to ``[min_depth, max_depth]`` and score it.

    This is Marigold's per-image evaluation: valid = finite GT within the depth range (and ``mask``); the fit and
    the metrics both use the valid pixels only. The returned dict also holds the fitted ``scale`` and ``shift``.
    """
    valid = valid_depth_mask(gt, mask, min_depth, max_depth)
    aligned, scale, shift = align_depth(pred, gt, valid, alignment)
    aligned = aligned.clamp(min=min_depth, max=max_depth)
    metrics = depth_error_metrics(aligned, gt, valid)
    metrics.update(scale=scale, shift=shift)
    return metrics
