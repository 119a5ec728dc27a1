"""``ActionFormerHead``: shared conv towers classifying every pyramid point and regressing its boundary distances."""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from opentad_lora.registry import MODELS, TASK_UTILS

from .assigner import assign_points
from .blocks import ConvNormAct

# One window's detections in finest-grid units: segments (N, 2), scores (N,), labels (N,).
GridDetections = Tuple[Tensor, Tensor, Tensor]


class Scale(nn.Module):
    """A learnable scalar multiplying the regression output of one pyramid level."""

    def __init__(self, init_value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def decode_segments(points: Tensor, offsets: Tensor) -> Tensor:
    """Segments ``[pos - left * stride, pos + right * stride]`` of points ``(P, 4)`` and offsets ``(..., P, 2)``."""
    position, stride = points[:, 0], points[:, 3]
    return torch.stack([position - offsets[..., 0] * stride, position + offsets[..., 1] * stride], dim=-1)


@MODELS.register_module()
class ActionFormerHead(nn.Module):
    """Anchor-free one-stage TAD head (ActionFormer, Zhang et al. 2022), shared over pyramid levels.

    Each of the two towers has ``num_convs`` masked conv + LayerNorm + ReLU layers, followed by a plain 3-wide
    prediction convolution; regression outputs are ``ReLU(scale_l * conv)``, one learnable scale per level.
    Parameter names are OpenTAD's (``cls_convs``, ``reg_convs``, ``cls_head``, ``reg_head``, ``scale.{l}.scale``).

    Args:
        num_classes: Number of action classes.
        in_channels: Width of the pyramid features.
        feat_channels: Width of the towers.
        num_convs: Conv layers per tower.
        prior_generator: ``PointGenerator`` config (strides and regression ranges).
        loss: ``dict(cls_loss=dict(type='FocalLoss'), reg_loss=dict(type='DIOULoss'))``.
        loss_normalizer: Initial number of positives the training losses are divided by.
        loss_normalizer_momentum: EMA momentum of that normaliser (kept as a buffer, so it resumes); outside
            training the losses are divided by the batch's own number of positives.
        center_sample: ``'radius'`` or None, see :func:`assign_points`.
        center_sample_radius: Centre sampling radius in strides.
        label_smoothing: Smoothing of the binary class targets.
        cls_prior_prob: Initial foreground probability (sets the classifier bias, as in RetinaNet); 0 keeps the
            default init.
        loss_weight: Weight of the regression loss; ``<= 0`` balances it to the classification loss per step.
        filter_similar_gt: See :func:`assign_points`.
    """

    def __init__(self, num_classes: int, in_channels: int, feat_channels: int, num_convs: int = 3,
                 prior_generator: Optional[dict] = None, loss: Optional[dict] = None,
                 loss_normalizer: float = 100.0, loss_normalizer_momentum: float = 0.9,
                 center_sample: Optional[str] = 'radius', center_sample_radius: float = 1.5,
                 label_smoothing: float = 0.0, cls_prior_prob: float = 0.01, loss_weight: float = 1.0,
                 filter_similar_gt: bool = True) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.prior_generator = TASK_UTILS.build(prior_generator or dict(
            type='PointGenerator', strides=[1, 2, 4, 8, 16, 32],
            regression_range=[(0, 4), (4, 8), (8, 16), (16, 32), (32, 64), (64, 10000)]))
        self.center_sample = center_sample
        self.center_sample_radius = center_sample_radius
        self.label_smoothing = label_smoothing
        self.loss_weight = loss_weight
        self.filter_similar_gt = filter_similar_gt
        self.loss_normalizer_momentum = loss_normalizer_momentum
        self.register_buffer('loss_normalizer', torch.tensor(float(loss_normalizer)))
        loss = loss or {}
        self.cls_loss = MODELS.build(loss.get('cls_loss', dict(type='FocalLoss')))
        self.reg_loss = MODELS.build(loss.get('reg_loss', dict(type='DIOULoss')))
        self.cls_convs = nn.ModuleList([ConvNormAct(in_channels if i == 0 else feat_channels, feat_channels, 3)
                                        for i in range(num_convs)])
        self.reg_convs = nn.ModuleList([ConvNormAct(in_channels if i == 0 else feat_channels, feat_channels, 3)
                                        for i in range(num_convs)])
        head_in = feat_channels if num_convs > 0 else in_channels
        self.cls_head = nn.Conv1d(head_in, num_classes, 3, padding=1)
        self.reg_head = nn.Conv1d(head_in, 2, 3, padding=1)
        self.scale = nn.ModuleList([Scale() for _ in range(self.prior_generator.num_levels)])
        if cls_prior_prob > 0:
            nn.init.constant_(self.cls_head.bias, -math.log((1 - cls_prior_prob) / cls_prior_prob))

    def forward(self, feats: Sequence[Tensor], masks: Sequence[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        """Per level: class logits ``(B, T_l, num_classes)`` and non-negative offsets ``(B, T_l, 2)`` in strides.

        Outputs at padded steps are not meaningful; the loss and the decoding skip them.
        """
        if len(feats) != len(self.scale):
            raise ValueError(f'ActionFormerHead has {len(self.scale)} levels (strides), got {len(feats)} feature maps')
        logits, offsets = [], []
        for scale, x, mask in zip(self.scale, feats, masks):
            cls_feat, reg_feat = x, x
            for layer in self.cls_convs:
                cls_feat, _ = layer(cls_feat, mask)
            for layer in self.reg_convs:
                reg_feat, _ = layer(reg_feat, mask)
            logits.append(self.cls_head(cls_feat).transpose(1, 2))
            offsets.append(F.relu(scale(self.reg_head(reg_feat))).transpose(1, 2))
        return logits, offsets

    def points(self, feats: Sequence[Tensor]) -> Tensor:
        """``(P, 4)`` rows ``[position, range_low, range_high, stride]`` of every level's points."""
        return torch.cat(self.prior_generator([x.shape[-1] for x in feats], feats[0].device))

    def targets(self, points: Tensor, gt_segments: Sequence[Tensor], gt_labels: Sequence[Tensor]
                ) -> Tuple[Tensor, Tensor]:
        """Class targets ``(B, P, num_classes)`` and regression targets ``(B, P, 2)`` of each sample's actions
        (``(K, 2)`` in finest-grid units and ``(K,)`` class indices, ``K`` may differ per sample)."""
        targets = [assign_points(points, segs.to(points), labels.to(points.device), self.num_classes,
                                 self.center_sample, self.center_sample_radius, self.filter_similar_gt)
                   for segs, labels in zip(gt_segments, gt_labels)]
        return torch.stack([t[0] for t in targets]), torch.stack([t[1] for t in targets])

    def loss(self, feats: Sequence[Tensor], masks: Sequence[Tensor], gt_segments: Sequence[Tensor],
             gt_labels: Sequence[Tensor]) -> Dict[str, Tensor]:
        """:meth:`loss_of_targets` of the actions given per sample: ``(K, 2)`` segments in finest-grid units and
        ``(K,)`` class indices."""
        return self.loss_of_targets(feats, masks, *self.targets(self.points(feats), gt_segments, gt_labels))

    def loss_of_targets(self, feats: Sequence[Tensor], masks: Sequence[Tensor], cls_targets: Tensor,
                        reg_targets: Tensor) -> Dict[str, Tensor]:
        """Focal loss over valid points + DIoU loss of the positive points' segments, over the normaliser.

        Masked sums over all points, with no host sync: the step traces as one graph (``torch.compile``) that does
        not depend on the number of positive or valid points, and whose shapes do not depend on the number of
        actions (targets are ``(B, P, ...)``, see :meth:`targets`).

        Args:
            feats, masks: Pyramid from the neck.
            cls_targets, reg_targets: From :meth:`targets`.
        """
        logits, offsets = (torch.cat(outputs, 1) for outputs in self(feats, masks))
        points, valid = self.points(feats), torch.cat(masks, 1)
        positive = (cls_targets.sum(-1) > 0) & valid
        num_pos = positive.sum().clamp_min(1)
        if self.training:
            momentum = self.loss_normalizer_momentum
            # the increment in float64, rounded once: the float32 values the Python-float update gave
            increment = (num_pos.double() * (1 - momentum)).to(self.loss_normalizer.dtype)
            self.loss_normalizer.mul_(momentum).add_(increment)
            normalizer = self.loss_normalizer.clone()  # the buffer moves on at the next step; autograd keeps this
        else:
            normalizer = num_pos
        cls_target = cls_targets * (1 - self.label_smoothing) + self.label_smoothing / (self.num_classes + 1)
        cls_loss = self.cls_loss(logits, cls_target, valid[..., None]) / normalizer
        reg_loss = self.reg_loss(decode_segments(points, offsets), decode_segments(points, reg_targets),
                                 positive) / normalizer
        weight = self.loss_weight if self.loss_weight > 0 else cls_loss.detach() / reg_loss.detach().clamp_min(0.01)
        return dict(cls_loss=cls_loss, reg_loss=reg_loss * weight)

    @torch.no_grad()
    def predict(self, feats: Sequence[Tensor], masks: Sequence[Tensor], pre_nms_thresh: float = 0.001,
                pre_nms_topk: int = 2000) -> List[GridDetections]:
        """Decode each sample's valid points into candidate segments (before NMS), in finest-grid units.

        Over all levels together, the ``pre_nms_topk`` (point, class) pairs with probability above
        ``pre_nms_thresh`` become segments; none is dropped for its length. With one class, every valid point is
        kept (no threshold, no top-k), as OpenTAD does.
        """
        logits, offsets = self(feats, masks)
        segments = decode_segments(self.points(feats), torch.cat(offsets, 1))
        probs, valid = torch.cat(logits, 1).sigmoid(), torch.cat(masks, 1)
        results = []
        for sample_segments, sample_probs, sample_valid in zip(segments, probs, valid):
            sample_segments, sample_probs = sample_segments[sample_valid], sample_probs[sample_valid]
            if self.num_classes == 1:
                scores = sample_probs[:, 0]
                results.append((sample_segments, scores, torch.zeros_like(scores, dtype=torch.long)))
                continue
            flat = sample_probs.flatten()
            candidates = (flat > pre_nms_thresh).nonzero()[:, 0]
            scores, order = flat[candidates].sort(descending=True)
            index = candidates[order[:pre_nms_topk]]
            results.append((sample_segments[index // self.num_classes], scores[:pre_nms_topk],
                            index % self.num_classes))
        return results
