"""HaMeR's losses: confidence-weighted L1 keypoints, masked MSE on MANO parameters, LSGAN terms.

Every loss is *summed* over the batch (not averaged), as in HaMeR, so the loss weights keep their meaning.
"""
from torch import Tensor


def keypoint_2d_loss(pred: Tensor, gt: Tensor) -> Tensor:
    """``sum(conf * |pred - gt|)`` with ``pred (B, N, 2)`` and ``gt (B, N, 3)`` = (x, y, confidence)."""
    return (gt[..., -1:] * (pred - gt[..., :-1]).abs()).sum()


def keypoint_3d_loss(pred: Tensor, gt: Tensor, root_id: int = 0) -> Tensor:
    """Root-relative ``sum(conf * |pred - gt|)``; ``pred (B, N, 3)``, ``gt (B, N, 4)`` = (x, y, z, confidence)."""
    pred = pred - pred[:, root_id:root_id + 1]
    gt_xyz = gt[..., :-1] - gt[:, root_id:root_id + 1, :-1]
    return (gt[..., -1:] * (pred - gt_xyz).abs()).sum()


def parameter_loss(pred: Tensor, gt: Tensor, has_param: Tensor) -> Tensor:
    """``sum(has_param * (pred - gt)^2)`` over samples whose annotation exists (``has_param (B,)`` in {0, 1})."""
    mask = has_param.to(pred.dtype).reshape(-1, *([1] * (pred.dim() - 1)))
    return (mask * (pred - gt) ** 2).sum()


def lsgan_generator_loss(fake_scores: Tensor) -> Tensor:
    """``sum((D(fake) - 1)^2) / B``: the generator wants its samples scored as real."""
    return ((fake_scores - 1.0) ** 2).sum() / fake_scores.shape[0]


def lsgan_discriminator_loss(fake_scores: Tensor, real_scores: Tensor) -> Tensor:
    """``sum(D(fake)^2) / B + sum((D(real) - 1)^2) / B``."""
    return (fake_scores ** 2).sum() / fake_scores.shape[0] + ((real_scores - 1.0) ** 2).sum() / real_scores.shape[0]
