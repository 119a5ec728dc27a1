"""Point generator, target assignment and the ActionFormer head's losses and decoding."""
import math

import pytest
import torch
import torch.nn.functional as F

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
    args = dict(num_classes=2, in_channels=8, feat_channels=8, num_convs=2, prior_generator=dict(
        type='PointGenerator', strides=[1, 2], regression_range=[(0, 4), (4, 10000)]))
    return ActionFormerHead(**{**args, **kwargs})


def pyramid(valid=(8, 4)):
    feats = [torch.randn(1, 8, 8), torch.randn(1, 8, 4)]
    masks = [torch.arange(8)[None] < valid[0], torch.arange(4)[None] < valid[1]]
    return feats, masks


def tower(layers, x, mask):
    """Each tower layer by hand: conv, zero padded steps, LayerNorm over channels, ReLU, zero padded steps."""
    keep = mask[:, None].float()
    for layer in layers:
        x = F.conv1d(x, layer.conv.weight, layer.conv.bias, padding=1) * keep
        x = F.layer_norm(x.transpose(1, 2), (x.shape[1], ), layer.norm.weight, layer.norm.bias, 1e-6).transpose(1, 2)
        x = x.relu() * keep
    return x


def test_towers_have_num_convs_layers_then_plain_prediction_convs():
    head = make_head(num_convs=3)
    assert len(head.cls_convs) == len(head.reg_convs) == 3
    with torch.no_grad():
        head.scale[1].scale.fill_(0.5)
    feats, masks = pyramid(valid=(6, 3))
    logits, offsets = head(feats, masks)
    for level, (x, mask) in enumerate(zip(feats, masks)):
        cls = F.conv1d(tower(head.cls_convs, x, mask), head.cls_head.weight, head.cls_head.bias, padding=1)
        reg = F.conv1d(tower(head.reg_convs, x, mask), head.reg_head.weight, head.reg_head.bias, padding=1)
        torch.testing.assert_close(logits[level], cls.transpose(1, 2))
        torch.testing.assert_close(offsets[level], (reg * (1.0 if level == 0 else 0.5)).relu().transpose(1, 2))


def loss_terms(head, feats, masks, gt, labels):
    """Focal-loss sum over valid points and DIoU sum over positive points' segments, computed from the outputs."""
    logits, offsets = head(feats, masks)
    _, points = two_level_points()
    cls, reg = assign_points(points, gt, labels, num_classes=2)
    logits, offsets, valid = torch.cat(logits, 1)[0], torch.cat(offsets, 1)[0], torch.cat(masks, 1)[0]
    pos = (cls.sum(1) > 0) & valid

    def segments(distances):
        return torch.stack([points[:, 0] - distances[:, 0] * points[:, 3],
                            points[:, 0] + distances[:, 1] * points[:, 3]], dim=1)

    focal = sigmoid_focal_loss(logits[valid], cls[valid]).sum().item()
    diou = diou_loss_1d(segments(offsets)[pos], segments(reg)[pos]).sum().item()
    return focal, diou, int(pos.sum())


def test_training_loss_is_over_the_running_normaliser_and_eval_loss_over_the_positives():
    head = make_head(loss_normalizer=100, loss_normalizer_momentum=0.9)
    feats, masks = pyramid()
    gt, labels = torch.tensor([[2.0, 6.0]]), torch.tensor([1])
    focal, diou, num_pos = loss_terms(head, feats, masks, gt, labels)
    assert num_pos == 3
    losses = head.loss(feats, masks, [gt], [labels])
    normaliser = 0.9 * 100 + 0.1 * 3
    assert head.loss_normalizer.item() == pytest.approx(normaliser)
    assert losses['cls_loss'].item() == pytest.approx(focal / normaliser, rel=1e-5)
    assert losses['reg_loss'].item() == pytest.approx(diou / normaliser, rel=1e-5)
    head.eval()  # evaluation: divided by this batch's positives; the running value is left alone
    losses = head.loss(feats, masks, [gt], [labels])
    assert head.loss_normalizer.item() == pytest.approx(normaliser)
    assert losses['cls_loss'].item() == pytest.approx(focal / 3, rel=1e-5)
    assert losses['reg_loss'].item() == pytest.approx(diou / 3, rel=1e-5)


def test_adaptive_regression_weight_balances_the_two_losses():
    head = make_head(loss_weight=-1).eval()
    feats, masks = pyramid()
    losses = head.loss(feats, masks, [torch.tensor([[2.0, 6.0]])], [torch.tensor([1])])
    focal, diou, _ = loss_terms(head, feats, masks, torch.tensor([[2.0, 6.0]]), torch.tensor([1]))
    assert losses['reg_loss'].item() == pytest.approx(focal / 3, rel=1e-5)  # reg * (cls / reg)
    assert diou > 0


def test_padded_steps_neither_count_nor_predict():
    head = make_head()
    feats, masks = pyramid(valid=(5, 3))
    losses = head.loss(feats, masks, [torch.tensor([[5.0, 7.5]])], [torch.tensor([0])])
    assert losses['reg_loss'].item() == 0.0  # every positive point of this action is padding
    _, scores, _ = head.predict(feats, masks, pre_nms_thresh=0.0)[0]
    assert scores.numel() == 2 * (5 + 3)  # classes x valid steps of both levels


def perfect_outputs(head, monkeypatch, probs, offsets):
    """Make the head output the given per-point probabilities (P, C) and offsets (P, 2) of the two levels."""
    logits = torch.logit(probs)

    def forward(feats, masks):
        return list(logits[None].split([8, 4], dim=1)), list(offsets[None].split([8, 4], dim=1))

    monkeypatch.setattr(head, 'forward', forward)


def test_decoding_takes_the_top_k_over_all_levels_and_keeps_zero_length_segments(monkeypatch):
    head = make_head()
    probs = torch.full((12, 2), 0.01)
    probs[1, 0], probs[9, 1], probs[10, 0], probs[3, 1] = 0.9, 0.8, 0.7, 0.6  # rows 8.. are level 1 (stride 2)
    probs[11, 1] = 0.95  # the best score sits on a padded step of level 1
    offsets = torch.ones(12, 2)
    offsets[9] = 0.0  # a zero-length segment is kept
    perfect_outputs(head, monkeypatch, probs, offsets)
    feats, masks = pyramid(valid=(8, 3))
    segments, scores, labels = head.predict(feats, masks, pre_nms_thresh=0.001, pre_nms_topk=3)[0]
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.8, 0.7]))
    assert labels.tolist() == [0, 1, 0]
    # point 1 (stride 1): [1 - 1, 1 + 1]; level-1 point 1 at 2 (stride 2), zero offsets; level-1 point 2 at 4
    torch.testing.assert_close(segments, torch.tensor([[0.0, 2.0], [2.0, 2.0], [2.0, 6.0]]))
    _, scores, _ = head.predict(feats, masks, pre_nms_thresh=0.5, pre_nms_topk=100)[0]
    assert scores.numel() == 4  # the threshold, not the top-k, limits this time


def test_one_class_keeps_every_valid_point(monkeypatch):
    head = ActionFormerHead(num_classes=1, in_channels=8, feat_channels=8, num_convs=1, prior_generator=dict(
        type='PointGenerator', strides=[1, 2], regression_range=[(0, 4), (4, 10000)]))
    perfect_outputs(head, monkeypatch, torch.full((12, 1), 1e-5), torch.ones(12, 2))
    feats, masks = pyramid(valid=(7, 4))
    segments, scores, labels = head.predict(feats, masks, pre_nms_thresh=0.001, pre_nms_topk=2)[0]
    assert scores.numel() == 11 and labels.sum() == 0


def test_parameter_names_and_classifier_prior():
    head = make_head(cls_prior_prob=0.01)
    assert torch.sigmoid(head.cls_head.bias).tolist() == pytest.approx([0.01, 0.01])
    assert head.cls_head.bias[0].item() == pytest.approx(-math.log(99))
    names = set(head.state_dict())
    assert {'scale.0.scale', 'scale.1.scale', 'loss_normalizer', 'cls_convs.1.conv.weight', 'cls_convs.1.norm.bias',
            'reg_convs.0.norm.weight', 'cls_head.bias', 'reg_head.weight'} <= names
    assert 'cls_convs.0.conv.bias' not in names  # a conv followed by a LayerNorm has no bias
    assert head.cls_convs[0].norm.eps == 1e-6
