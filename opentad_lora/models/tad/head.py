"""``ActionFormerHead``: shared conv towers classifying every pyramid point and regressing its boundary distances."""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from opentad_lora.registry import MODELS, TASK_UTILS

from .assigner import assign_points
from .blocks import ConvNormAct, MaskedConv1d

# One window's detections in finest-grid units: segments (N, 2), scores (N,), labels (N,).
GridDetections = Tuple[Tensor, Tensor, Tensor]


@MODELS.register_module()
class ActionFormerHead(nn.Module):
    """Anchor-free one-stage TAD head (ActionFormer, Zhang et al. 2022), shared over pyramid levels.

    Args:
        num_classes: Number of action classes.
        in_channels: Width of the pyramid features.
        feat_channels: Width of the towers.
        num_convs: Conv layers per tower (the last tower layer is the prediction conv).
        cls_prior_prob: Initial foreground probability (sets the classifier bias, as in RetinaNet).
        prior_generator: ``PointGenerator`` config (strides and regression ranges).
        loss_normalizer: Initial number of positives the losses are divided by.
        loss_normalizer_momentum: EMA momentum of that normaliser (kept as a buffer, so it resumes).
        center_sample: ``'radius'`` or None, see :func:`assign_points`.
        center_sample_radius: Centre sampling radius in strides.
        label_smoothing: Smoothing of the binary class targets.
        loss: ``dict(cls_loss=dict(type='FocalLoss'), reg_loss=dict(type='DIOULoss'))``.
        kernel_size: Kernel of the tower and prediction convs.
    """

    def __init__(self, num_classes: int, in_channels: int, feat_channels: int, num_convs: int = 3,
                 cls_prior_prob: float = 0.01, prior_generator: Optional[dict] = None,
                 loss_normalizer: float = 100.0, loss_normalizer_momentum: float = 0.9,
                 center_sample: Optional[str] = 'radius', center_sample_radius: float = 1.5,
                 label_smoothing: float = 0.0, loss: Optional[dict] = None, kernel_size: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.prior_generator = TASK_UTILS.build(prior_generator or dict(
            type='PointGenerator', strides=[1, 2, 4, 8, 16, 32],
            regression_range=[(0, 4), (4, 8), (8, 16), (16, 32), (32, 64), (64, 10000)]))
        self.center_sample = center_sample
        self.center_sample_radius = center_sample_radius
        self.label_smoothing = label_smoothing
        self.loss_normalizer_momentum = loss_normalizer_momentum
        self.register_buffer('loss_normalizer', torch.tensor(float(loss_normalizer)))
        loss = loss or {}
        self.cls_loss = MODELS.build(loss.get('cls_loss', dict(type='FocalLoss')))
        self.reg_loss = MODELS.build(loss.get('reg_loss', dict(type='DIOULoss')))
        widths = [in_channels] + [feat_channels] * (num_convs - 1)
        self.cls_convs = nn.ModuleList([ConvNormAct(widths[i], feat_channels, kernel_size)
                                        for i in range(num_convs - 1)])
        self.reg_convs = nn.ModuleList([ConvNormAct(widths[i], feat_channels, kernel_size)
                                        for i in range(num_convs - 1)])
        self.cls_head = MaskedConv1d(widths[-1], num_classes, kernel_size)
        self.reg_head = MaskedConv1d(widths[-1], 2, kernel_size)
        self.scales = nn.Parameter(torch.ones(self.prior_generator.num_levels))
        nn.init.constant_(self.cls_head.bias, -math.log((1 - cls_prior_prob) / cls_prior_prob))
        nn.init.zeros_(self.reg_head.bias)

    def forward(self, feats: Sequence[Tensor], masks: Sequence[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        """Per level: class logits ``(B, T_l, num_classes)`` and non-negative offsets ``(B, T_l, 2)`` in strides."""
        if len(feats) != self.prior_generator.num_levels:
            raise ValueError(f'ActionFormerHead has {self.prior_generator.num_levels} levels (strides), '
                             f'got {len(feats)} feature maps')
        logits, offsets = [], []
        for level, (x, mask) in enumerate(zip(feats, masks)):
            cls_feat, reg_feat = x, x
            for layer in self.cls_convs:
                cls_feat, _ = layer(cls_feat, mask)
            for layer in self.reg_convs:
                reg_feat, _ = layer(reg_feat, mask)
            logits.append(self.cls_head(cls_feat, mask)[0].transpose(1, 2))
            offsets.append(F.relu(self.scales[level] * self.reg_head(reg_feat, mask)[0]).transpose(1, 2))
        return logits, offsets

    def loss(self, feats: Sequence[Tensor], masks: Sequence[Tensor], gt_segments: Sequence[Tensor],
             gt_labels: Sequence[Tensor]) -> Dict[str, Tensor]:
        """Focal + DIoU losses divided by the running number of positive points.

        Args:
            feats, masks: Pyramid from the neck.
            gt_segments: Per sample ``(K, 2)`` actions in finest-grid units.
            gt_labels: Per sample ``(K,)`` class indices.
        """
        logits, offsets = self(feats, masks)
        points = torch.cat(self.prior_generator([x.shape[-1] for x in feats], feats[0].device))
        targets = [assign_points(points, segs.to(points), labels.to(points.device), self.num_classes,
                                 self.center_sample, self.center_sample_radius)
                   for segs, labels in zip(gt_segments, gt_labels)]
        cls_targets = torch.stack([t[0] for t in targets])
        reg_targets = torch.stack([t[1] for t in targets])
        logits, offsets, valid = torch.cat(logits, 1), torch.cat(offsets, 1), torch.cat(masks, 1)
        positive = (cls_targets.sum(-1) > 0) & valid
        num_pos = positive.sum().item()
        if self.training:
            momentum = self.loss_normalizer_momentum
            self.loss_normalizer.mul_(momentum).add_((1 - momentum) * max(num_pos, 1))
        normalizer = self.loss_normalizer.item()
        cls_target = cls_targets[valid]
        if self.label_smoothing > 0:
            cls_target = cls_target * (1 - self.label_smoothing) + self.label_smoothing / (self.num_classes + 1)
        loss_cls = self.cls_loss(logits[valid], cls_target) / normalizer
        if num_pos > 0:
            loss_reg = self.reg_loss(offsets[positive], reg_targets[positive]) / normalizer
        else:
            loss_reg = offsets.sum() * 0.0
        return dict(loss_cls=loss_cls, loss_reg=loss_reg)

    @torch.no_grad()
    def predict(self, feats: Sequence[Tensor], masks: Sequence[Tensor], pre_nms_thresh: float = 0.001,
                pre_nms_topk: int = 2000, duration_thresh: float = 0.05) -> List[GridDetections]:
        """Decode each sample's points into candidate segments (before NMS), in finest-grid units.

        Per level, the ``pre_nms_topk`` (point, class) pairs with probability above ``pre_nms_thresh`` become
        segments ``[position - left * stride, position + right * stride]``; segments no longer than
        ``duration_thresh`` grid steps are dropped.
        """
        logits, offsets = self(feats, masks)
        points = self.prior_generator([x.shape[-1] for x in feats], feats[0].device)
        results = []
        for b in range(feats[0].shape[0]):
            segments, scores, labels = [], [], []
            for level_logits, level_offsets, level_points, mask in zip(logits, offsets, points, masks):
                prob = (torch.sigmoid(level_logits[b]) * mask[b, :, None]).flatten()
                candidates = (prob > pre_nms_thresh).nonzero()[:, 0]
                top = prob[candidates].topk(min(pre_nms_topk, candidates.numel())).indices
                index = candidates[top]
                point_index, cls_index = index // self.num_classes, index % self.num_classes
                pts, offs = level_points[point_index], level_offsets[b, point_index]
                segs = torch.stack([pts[:, 0] - offs[:, 0] * pts[:, 3], pts[:, 0] + offs[:, 1] * pts[:, 3]], dim=1)
                keep = (segs[:, 1] - segs[:, 0]) > duration_thresh
                segments.append(segs[keep])
                scores.append(prob[index][keep])
                labels.append(cls_index[keep])
            results.append((torch.cat(segments), torch.cat(scores), torch.cat(labels)))
        return results
