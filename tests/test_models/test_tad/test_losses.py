"""Focal and DIoU losses against values worked out by hand."""
import math

import pytest
import torch

from opentad_lora.models.tad.losses import DIOULoss, FocalLoss, diou_loss_1d, sigmoid_focal_loss


def test_focal_loss_hand_values():
    logits = torch.tensor([0.0, 0.0, 2.0, -1.0])
    targets = torch.tensor([1.0, 0.0, 1.0, 1.0])
    p2, pm1 = 1 / (1 + math.exp(-2)), 1 / (1 + math.exp(1))
    expected = [
        0.25 * 0.5 ** 2 * math.log(2),  # p = .5, positive: alpha * (1 - p)^2 * -log p
        0.75 * 0.5 ** 2 * math.log(2),  # p = .5, negative: (1 - alpha) * p^2 * -log(1 - p)
        0.25 * (1 - p2) ** 2 * -math.log(p2),
        0.25 * (1 - pm1) ** 2 * -math.log(pm1),
    ]
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets), torch.tensor(expected))
    assert FocalLoss(loss_weight=2.0)(logits, targets).item() == pytest.approx(2 * sum(expected), rel=1e-6)


def test_focal_loss_without_focusing_is_weighted_bce():
    logits, targets = torch.randn(20), torch.rand(20).round()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction='none')
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets, alpha=-1, gamma=0.0), bce)


def test_diou_loss_hand_values():
    pred = torch.tensor([[-1.0, 1.0], [-1.0, 1.0], [0.0, 2.0], [5.0, 6.0]])
    target = torch.tensor([[-1.0, 1.0], [-2.0, 2.0], [-1.0, 1.0], [0.0, 2.0]])
    # identical: 0; same centre, half the length: 1 - 1/2; [0, 2] vs [-1, 1]: IoU 1/3, centre distance 1,
    # enclosing length 3 -> 1 - 1/3 + 1/9; disjoint [5, 6] vs [0, 2]: IoU 0, centres 5.5 and 1, enclosing 6
    expected = torch.tensor([0.0, 0.5, 1 - 1 / 3 + 1 / 9, 1 + 4.5 ** 2 / 36])
    torch.testing.assert_close(diou_loss_1d(pred, target), expected)
    assert DIOULoss(loss_weight=3.0)(pred, target).item() == pytest.approx(3 * expected.sum().item())


def test_diou_loss_is_translation_and_scale_invariant():
    pred, target = torch.rand(6, 2).sort(dim=1).values, torch.rand(6, 2).sort(dim=1).values
    moved = diou_loss_1d(pred * 8 + 100, target * 8 + 100)
    torch.testing.assert_close(moved, diou_loss_1d(pred, target), rtol=1e-4, atol=1e-5)


def test_diou_loss_gradient_pulls_prediction_towards_target():
    pred = torch.tensor([[-0.5, 3.0]], requires_grad=True)
    diou_loss_1d(pred, torch.tensor([[-2.0, 2.0]])).sum().backward()
    assert pred.grad[0, 0] > 0 and pred.grad[0, 1] > 0  # move the start left and the end left


def test_masked_losses_sum_the_kept_elements_and_ignore_non_finite_masked_ones():
    logits = torch.tensor([[0.5, float('inf')], [-1.0, float('nan')]], requires_grad=True)
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    keep = torch.tensor([[True, False], [True, False]])
    loss = FocalLoss(loss_weight=2.0)(logits, targets, keep)
    assert loss.item() == pytest.approx(FocalLoss(loss_weight=2.0)(logits[keep], targets[keep]).item())
    loss.backward()
    assert logits.grad[~keep].tolist() == [0.0, 0.0] and torch.isfinite(logits.grad).all()

    pred = torch.tensor([[0.0, 2.0], [-float('inf'), float('inf')], [1.0, float('nan')]], requires_grad=True)
    target = torch.tensor([[1.0, 3.0], [0.0, 1.0], [2.0, 2.0]])
    keep = torch.tensor([True, False, False])
    loss = DIOULoss(loss_weight=3.0)(pred, target, keep)  # row 0: IoU 1/3, centres 1 and 2, enclosing 3
    assert loss.item() == pytest.approx(3 * (1 - 1 / 3 + 1 / 9))
    loss.backward()
    assert pred.grad[1:].abs().sum() == 0 and torch.isfinite(pred.grad).all()
