"""Point generator, target assignment and the ActionFormer head's losses and decoding."""
import math

import pytest
import torch

from opentad_lora.models.tad import ActionFormerHead, PointGenerator, assign_points
from opentad_lora.models.tad.losses import diou_loss_1d, sigmoid_focal_loss


def two_level_points():
    generator = PointGenerator(strides=[1, 2], regression_range=[(0, 4), (4, 10000)])
    return generator, torch.cat(generator([8, 4]))


def test_point_generator_rows():
    generator, _ = two_level_points()
    level0, level1 = generator([8, 4])
    torch.testing.assert_close(level1[:, 0], torch.tensor([0.0, 2.0, 4.0, 6.0]))
    assert level1[0, 1:].tolist() == [4, 10000, 2] and level0[3].tolist() == [3, 0, 4, 1]
    with pytest.raises(ValueError, match='2 levels'):
        generator([8])


def test_centre_sampling_and_regression_ranges_pick_the_positive_points():
    # action [2, 6], centre 4; radius 1.5 strides: level 0 (stride 1) points 3, 4, 5 lie strictly inside
    # [2.5, 5.5]; level 1 point 4 is central too, but its largest distance (2) is outside its range (4, inf)
    _, points = two_level_points()
    cls, reg = assign_points(points, torch.tensor([[2.0, 6.0]]), torch.tensor([1]), num_classes=3)
    positive = cls.sum(1).nonzero()[:, 0].tolist()
    assert positive == [3, 4, 5]
    assert cls[positive].tolist() == [[0, 1, 0]] * 3
    torch.testing.assert_close(reg[positive], torch.tensor([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]]))


def test_ambiguous_point_takes_the_shortest_action_and_long_actions_go_up_the_pyramid():
    _, points = two_level_points()
    gts = torch.tensor([[0.0, 4.0], [1.0, 4.5], [0.0, 12.0]])
    cls, reg = assign_points(points, gts, torch.tensor([0, 1, 2]), num_classes=3, center_sample=None)
    # level-0 point 2 is inside all three; the first two fit its range (0, 4) and the shorter one (3.5) wins
    assert cls[2].tolist() == [0, 1, 0]
    torch.testing.assert_close(reg[2], torch.tensor([1.0, 2.5]))
    # the level-1 point at 6 (row 8 + 3) holds the long action, distances in strides of 2
    assert cls[11].tolist() == [0, 0, 1]
    torch.testing.assert_close(reg[11], torch.tensor([3.0, 3.0]))
    # two actions of equal length at the same place set both class bits
    cls, _ = assign_points(points, gts[[0, 0]], torch.tensor([0, 2]), num_classes=3, center_sample=None)
    assert cls[2].tolist() == [1, 0, 1]


def test_no_ground_truth_gives_all_negative_targets():
    _, points = two_level_points()
    cls, reg = assign_points(points, torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), num_classes=2)
    assert cls.sum() == 0 and reg.shape == (12, 2)


def make_head(**kwargs) -> ActionFormerHead:
    return ActionFormerHead(num_classes=2, in_channels=8, feat_channels=8, num_convs=2,
                            prior_generator=dict(type='PointGenerator', strides=[1, 2],
                                                 regression_range=[(0, 4), (4, 10000)]), **kwargs)


def test_loss_is_focal_plus_diou_over_the_running_normaliser():
    head = make_head(loss_normalizer=100, loss_normalizer_momentum=0.9)
    feats = [torch.randn(1, 8, 8), torch.randn(1, 8, 4)]
    masks = [torch.ones(1, 8, dtype=torch.bool), torch.ones(1, 4, dtype=torch.bool)]
    gt, labels = torch.tensor([[2.0, 6.0]]), torch.tensor([1])
    losses = head.loss(feats, masks, [gt], [labels])
    normaliser = 0.9 * 100 + 0.1 * 3  # three positive points
    assert head.loss_normalizer.item() == pytest.approx(normaliser)
    logits, offsets = head(feats, masks)
    _, points = two_level_points()
    cls, reg = assign_points(points, gt, labels, num_classes=2)
    logits, offsets = torch.cat(logits, 1)[0], torch.cat(offsets, 1)[0]
    pos = cls.sum(1) > 0
    assert losses['loss_cls'].item() == pytest.approx(sigmoid_focal_loss(logits, cls).sum().item() / normaliser)
    assert losses['loss_reg'].item() == pytest.approx(diou_loss_1d(offsets[pos], reg[pos]).sum().item() / normaliser)


def test_padded_steps_neither_count_nor_predict():
    head = make_head()
    feats = [torch.randn(1, 8, 8), torch.randn(1, 8, 4)]
    masks = [torch.arange(8)[None] < 5, torch.arange(4)[None] < 3]
    losses = head.loss(feats, masks, [torch.tensor([[5.0, 7.5]])], [torch.tensor([0])])
    assert losses['loss_reg'].item() == 0.0  # every positive point of this action is padding
    _, scores, _ = head.predict(feats, masks, pre_nms_thresh=0.0, duration_thresh=-1.0)[0]
    assert scores.numel() == 2 * (5 + 3)  # classes x valid steps of both levels; padded steps score 0


def test_classifier_starts_at_the_prior_probability():
    head = make_head(cls_prior_prob=0.01)
    assert torch.sigmoid(head.cls_head.bias).tolist() == pytest.approx([0.01, 0.01])
    assert head.cls_head.bias[0].item() == pytest.approx(-math.log(99))
