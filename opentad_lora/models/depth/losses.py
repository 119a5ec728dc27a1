"""VGGT's training losses for depth + camera: confidence-weighted regression, gradient loss, camera L1 loss.

Total (the seed's recipe): ``camera_weight * L_cam + depth_weight * (L_conf + L_reg + L_grad)``; the terms are returned
already weighted, under names containing ``loss`` so MMEngine sums them, plus unweighted diagnostics without it.
"""
from typing import Dict, List, Optional

import torch
from torch import Tensor, nn

from opentad_lora.registry import MODELS


def filter_by_quantile(values: Tensor, valid_range: float, min_elements: int = 1000, hard_max: float = 100.0) -> Tensor:
    """Clamp at ``hard_max`` and drop the values at or above the ``valid_range`` quantile (outliers).

    Small tensors (``<= min_elements``) are returned as they are; the filter is skipped when it would leave
    ``min_elements`` or fewer values.
    """
    if valid_range <= 0 or values.numel() <= min_elements:
        return values
    values = values.clamp(max=hard_max)
    rank = min(max(int(round(valid_range * (values.numel() - 1))) + 1, 1), values.numel())
    threshold = min(float(values.detach().flatten().kthvalue(rank).values), hard_max)
    keep = values < threshold
    return values[keep] if int(keep.sum()) > min_elements else values


def confidence_weighted(errors: Tensor, conf: Tensor, gamma: float, alpha: float) -> Tensor:
    """DUSt3R's aleatoric loss ``gamma * error * conf - alpha * log(conf)`` (confidence >= 1 with ``expp1``)."""
    return gamma * errors * conf - alpha * torch.log(conf)


def gradient_loss(pred: Tensor, gt: Tensor, mask: Tensor, conf: Optional[Tensor] = None, gamma: float = 1.0,
                  alpha: float = 0.2, hard_max: float = 100.0) -> Tensor:
    """L1 of the x/y finite differences of ``pred - gt`` over pairs of valid neighbours, per valid pixel.

    Args:
        pred: (N, H, W) prediction.
        gt: (N, H, W) target.
        mask: (N, H, W) bool validity.
        conf: Optional (N, H, W) confidence; weights each difference as :func:`confidence_weighted`.
    """
    mask = mask.to(pred.dtype)
    diff = (pred - gt) * mask
    total = pred.new_zeros(())
    for dim in (-1, -2):
        size = diff.shape[dim]
        grad = (diff.narrow(dim, 1, size - 1) - diff.narrow(dim, 0, size - 1)).abs().clamp(max=hard_max)
        pair_mask = mask.narrow(dim, 1, size - 1) * mask.narrow(dim, 0, size - 1)
        if conf is not None:
            grad = confidence_weighted(grad, conf.narrow(dim, 1, size - 1), gamma, alpha)
        total = total + (grad * pair_mask).sum()
    return total / mask.sum().clamp(min=1)


def multi_scale_gradient_loss(pred: Tensor, gt: Tensor, mask: Tensor, scales: int = 4,
                              conf: Optional[Tensor] = None, **kwargs) -> Tensor:
    """Mean of :func:`gradient_loss` on the inputs subsampled by 1, 2, 4, ... (``scales`` levels)."""
    total = pred.new_zeros(())
    for scale in range(scales):
        step = 2 ** scale
        total = total + gradient_loss(pred[:, ::step, ::step], gt[:, ::step, ::step], mask[:, ::step, ::step],
                                      None if conf is None else conf[:, ::step, ::step], **kwargs)
    return total / scales


@MODELS.register_module()
class VGGTDepthCameraLoss(nn.Module):
    """Depth (confidence + regression + gradient) and camera losses of VGGT fine-tuning.

    Args:
        camera_weight: Weight of the camera loss (2.0 in the seed's ETH3D recipe; 5.0 in VGGT's released config).
        depth_weight: Weight of each depth term (5.0 in the seed's recipe; 1.0 in VGGT's released config).
        conf_gamma: ``gamma`` of the confidence-weighted term.
        conf_alpha: ``alpha`` of its ``-log(conf)`` regulariser.
        valid_range: Quantile above which per-pixel losses are dropped as outliers (<= 0: keep all).
        grad_scales: Scales of the gradient loss.
        grad_conf: Confidence-weight the gradient loss too (VGGT's ``'grad+conf'``; its default ``'grad'`` does not).
        stage_gamma: The camera loss of refinement stage ``i`` of ``n`` is weighted ``stage_gamma^(n-1-i)``.
        trans_weight: Weight of the translation L1.
        rot_weight: Weight of the quaternion L1.
        fov_weight: Weight of the field-of-view L1.
        min_valid_points: A sequence whose first view has no more valid depth pixels is left out of the camera loss,
            and a batch with no more valid pixels gets a zero depth loss.
        min_quantile_elements: Fewer per-pixel losses than this are not quantile-filtered.
    """

    def __init__(self, camera_weight: float = 2.0, depth_weight: float = 5.0, conf_gamma: float = 1.0,
                 conf_alpha: float = 0.2, valid_range: float = 0.98, grad_scales: int = 4, grad_conf: bool = False,
                 stage_gamma: float = 0.6, trans_weight: float = 1.0, rot_weight: float = 1.0,
                 fov_weight: float = 0.5, min_valid_points: int = 100, min_quantile_elements: int = 1000) -> None:
        super().__init__()
        self.camera_weight = camera_weight
        self.depth_weight = depth_weight
        self.conf_gamma = conf_gamma
        self.conf_alpha = conf_alpha
        self.valid_range = valid_range
        self.grad_scales = grad_scales
        self.grad_conf = grad_conf
        self.stage_gamma = stage_gamma
        self.pose_weights = (trans_weight, rot_weight, fov_weight)
        self.min_valid_points = min_valid_points
        self.min_quantile_elements = min_quantile_elements

    def depth_loss(self, pred: Tensor, conf: Tensor, gt: Tensor, valid: Tensor) -> Dict[str, Tensor]:
        """Weighted ``loss_conf_depth``, ``loss_reg_depth``, ``loss_grad_depth`` of (B, S, H, W) inputs."""
        if int(valid.sum()) < self.min_valid_points:
            zero = (pred * 0).mean()
            return dict(loss_conf_depth=zero, loss_reg_depth=zero, loss_grad_depth=zero)
        errors = (gt[valid] - pred[valid]).abs()
        terms = dict(conf=confidence_weighted(errors, conf[valid], self.conf_gamma, self.conf_alpha), reg=errors)
        out = {f'loss_{name}_depth': self.depth_weight * filter_by_quantile(
            value, self.valid_range, self.min_quantile_elements).mean() for name, value in terms.items()}
        flat = (-1, ) + tuple(pred.shape[-2:])
        grad = multi_scale_gradient_loss(pred.reshape(flat), gt.reshape(flat), valid.reshape(flat), self.grad_scales,
                                         conf.reshape(flat) if self.grad_conf else None, gamma=self.conf_gamma,
                                         alpha=self.conf_alpha)
        out['loss_grad_depth'] = self.depth_weight * grad
        return out

    def camera_loss(self, pose_encodings: List[Tensor], gt_encoding: Tensor, valid: Tensor) -> Dict[str, Tensor]:
        """Weighted ``loss_camera`` over refinement stages, plus unweighted ``cam_T``, ``cam_R``, ``cam_FoV``."""
        usable = valid[:, 0].flatten(1).sum(-1) > self.min_valid_points
        parts = torch.zeros(3, dtype=gt_encoding.dtype, device=gt_encoding.device)
        if usable.any():
            stages = len(pose_encodings)
            for index, pred in enumerate(pose_encodings):
                err = (pred[usable] - gt_encoding[usable]).abs()
                stage = torch.stack([err[..., :3].clamp(max=100).mean(), err[..., 3:7].mean(), err[..., 7:].mean()])
                parts = parts + stage * self.stage_gamma ** (stages - index - 1)
            parts = parts / stages
        else:
            parts = parts + pose_encodings[-1].sum() * 0
        total = sum(w * p for w, p in zip(self.pose_weights, parts))
        return dict(loss_camera=self.camera_weight * total, cam_T=parts[0].detach(), cam_R=parts[1].detach(),
                    cam_FoV=parts[2].detach())

    def forward(self, depth: Tensor, depth_conf: Tensor, gt_depth: Tensor, valid: Tensor,
                pose_encodings: Optional[List[Tensor]] = None,
                gt_pose_encoding: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """All losses: depth terms always, the camera term when pose predictions and targets are given."""
        losses = self.depth_loss(depth, depth_conf, gt_depth, valid)
        if pose_encodings is not None and gt_pose_encoding is not None:
            losses.update(self.camera_loss(pose_encodings, gt_pose_encoding, valid))
        return losses
