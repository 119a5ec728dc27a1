"""Losses of the one-stage TAD head: sigmoid focal loss (classes) and distance-IoU loss (boundary offsets).

Both modules take an optional boolean ``mask`` instead of boolean-indexed inputs: the loss is summed over the masked
elements of fixed-shape tensors, so a training step traces as one graph whatever the number of positive points.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from opentad_lora.registry import MODELS


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Element-wise focal loss of Lin et al. (2017) on independent sigmoid outputs (no reduction).

    ``loss = alpha_t * (1 - p_t)^gamma * BCE(logits, targets)`` with ``p_t = p*t + (1-p)*(1-t)`` and
    ``alpha_t = alpha*t + (1-alpha)*(1-t)``; ``alpha < 0`` disables the class balancing.
    """
    logits, targets = logits.float(), targets.float()
    prob = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction='none')
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss


def diou_loss_1d(pred: Tensor, target: Tensor, eps: float = 1e-7) -> Tensor:
    """Distance-IoU loss of 1-D segments given as ``(..., 2)`` rows ``(start, end)`` (no reduction).

    ``1 - IoU + rho^2 / c^2`` where ``rho`` is the distance between the two segment centres and ``c`` the length of
    the smallest segment enclosing both (Zheng et al., 2020, in one dimension as in ActionFormer). Both ratios are
    translation and scale invariant, so the loss of a point's (left, right) distances is the same in any units.

    Args:
        pred: ``(..., 2)`` predicted segments.
        target: ``(..., 2)`` ground-truth segments.
        eps: Floor of the union and of ``c^2``.
    """
    inter = (torch.minimum(pred[..., 1], target[..., 1]) - torch.maximum(pred[..., 0], target[..., 0])).clamp(min=0)
    union = (pred[..., 1] - pred[..., 0]) + (target[..., 1] - target[..., 0]) - inter
    iou = inter / union.clamp(min=eps)
    enclosing = torch.maximum(pred[..., 1], target[..., 1]) - torch.minimum(pred[..., 0], target[..., 0])
    centre_distance = 0.5 * ((pred[..., 0] + pred[..., 1]) - (target[..., 0] + target[..., 1]))
    return 1.0 - iou + centre_distance.pow(2) / enclosing.pow(2).clamp(min=eps)


def masked_sum(loss: Tensor, mask: Optional[Tensor]) -> Tensor:
    """Sum of ``loss`` over the elements where the broadcastable ``mask`` is True (all of them when None)."""
    return (loss if mask is None else torch.where(mask, loss, 0.0)).sum()


@MODELS.register_module()
class FocalLoss(nn.Module):
    """Summed :func:`sigmoid_focal_loss` times ``loss_weight``, over the elements where ``mask`` is True.

    ``mask`` broadcasts to ``logits``; masked-out logits are replaced by 0 first, so an inf there cannot turn into a
    NaN gradient.
    """

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.alpha, self.gamma, self.loss_weight = alpha, gamma, loss_weight

    def forward(self, logits: Tensor, targets: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        if mask is not None:
            logits = torch.where(mask, logits, 0.0)
        return self.loss_weight * masked_sum(sigmoid_focal_loss(logits, targets, self.alpha, self.gamma), mask)


@MODELS.register_module()
class DIOULoss(nn.Module):
    """Summed :func:`diou_loss_1d` times ``loss_weight`` (OpenTAD's name), over the rows where ``mask`` is True.

    Masked-out rows of both inputs are replaced by the unit segment before the loss (whose value and gradient are
    then exactly 0): masking only the output would let a degenerate row's inf or NaN through, as ``NaN * 0 = NaN``.
    """

    def __init__(self, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.loss_weight = loss_weight

    def forward(self, pred: Tensor, target: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        if mask is not None:
            unit = pred.new_tensor([0.0, 1.0])
            pred, target = torch.where(mask[..., None], pred, unit), torch.where(mask[..., None], target, unit)
        return self.loss_weight * masked_sum(diou_loss_1d(pred, target), mask)
