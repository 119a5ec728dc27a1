"""Depth alignment and metrics against hand-computed values (Marigold's ETH3D protocol)."""
import math

import pytest
import torch

from opentad_lora.evaluation.depth import (DepthMetric, align_depth, compute_depth_metrics, depth_error_metrics,
                                           least_squares_scale_shift, median_scale, valid_depth_mask)


def test_least_squares_recovers_a_known_scale_and_shift_exactly():
    gt = torch.rand(2, 7, 9, dtype=torch.float64) * 10 + 1
    pred = (gt - 0.75) / 3.5  # gt = 3.5 * pred + 0.75
    mask = torch.rand(gt.shape) > 0.3
    pred[~mask] = -1000.0  # garbage outside the mask must not influence the fit
    aligned, scale, shift = align_depth(pred, gt, mask, 'least_squares')
    assert scale == pytest.approx(3.5, abs=1e-12)
    assert shift == pytest.approx(0.75, abs=1e-12)
    torch.testing.assert_close(aligned[mask], gt[mask], rtol=0, atol=1e-12)
    metrics = compute_depth_metrics(pred, gt, mask)
    assert metrics['abs_rel'] == pytest.approx(0.0, abs=1e-12)
    assert metrics['delta1'] == 1.0


def test_least_squares_matches_the_normal_equations_by_hand():
    # x = [1, 2, 3], y = [2, 3, 5]: s = sum((x-2)(y-10/3)) / sum((x-2)^2) = 3 / 2, t = 10/3 - 1.5 * 2 = 1/3.
    scale, shift = least_squares_scale_shift(torch.tensor([1.0, 2, 3]), torch.tensor([2.0, 3, 5]),
                                             torch.ones(3, dtype=torch.bool))
    assert scale == pytest.approx(1.5)
    assert shift == pytest.approx(1 / 3)


def test_median_scaling_is_scale_only():
    gt = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0])
    assert median_scale(gt * 3, gt, torch.ones(5, dtype=torch.bool)) == pytest.approx(1 / 3)
    metrics = compute_depth_metrics(gt * 3, gt, alignment='median')
    assert metrics['abs_rel'] == pytest.approx(0.0, abs=1e-12)
    assert metrics['shift'] == 0.0
    # A shifted prediction cannot be fixed by a scale: median(gt) = 4, median(pred) = 5 -> s = 0.8.
    shifted = compute_depth_metrics(gt + 1, gt, alignment='median')
    expected = sum(abs(0.8 * (g + 1) - g) / g for g in [1.0, 2.0, 4.0, 8.0, 16.0]) / 5
    assert shifted['abs_rel'] == pytest.approx(expected)


def test_error_metrics_by_hand():
    gt = torch.tensor([1.0, 2.0, 4.0, 5.0])
    pred = torch.tensor([1.1, 1.5, 4.0, 10.0])
    m = depth_error_metrics(pred, gt, torch.ones(4, dtype=torch.bool))
    assert m['abs_rel'] == pytest.approx((0.1 + 0.25 + 0 + 1.0) / 4)
    assert m['sq_rel'] == pytest.approx((0.01 / 1 + 0.25 / 2 + 0 + 25 / 5) / 4)
    assert m['rmse'] == pytest.approx(math.sqrt((0.01 + 0.25 + 0 + 25) / 4))
    assert m['rmse_log'] == pytest.approx(math.sqrt((math.log(1.1) ** 2 + math.log(0.75) ** 2 + math.log(2) ** 2) / 4))
    assert m['mae'] == pytest.approx((0.1 + 0.5 + 0 + 5.0) / 4)
    assert m['log10'] == pytest.approx((math.log10(1.1) + abs(math.log10(0.75)) + 0 + math.log10(2)) / 4)
    e = [math.log(1.1), math.log(0.75), 0.0, math.log(2)]
    assert m['silog'] == pytest.approx(100 * math.sqrt(sum(v * v for v in e) / 4 - (sum(e) / 4) ** 2))
    assert m['irmse'] == pytest.approx(math.sqrt(((1 / 1.1 - 1) ** 2 + (1 / 1.5 - 1 / 2) ** 2 + 0
                                                  + (1 / 10 - 1 / 5) ** 2) / 4))
    # max ratios: 1.1, 1.333, 1.0, 2.0
    assert m['delta1'] == pytest.approx(0.5)
    assert m['delta2'] == pytest.approx(0.75)
    assert m['delta3'] == pytest.approx(0.75)


def test_valid_pixels_follow_the_eth3d_rules():
    gt = torch.tensor([float('inf'), 0.0, 1e-6, 2.0, float('nan'), 3.0])
    mask = torch.tensor([True, True, True, True, True, False])
    assert valid_depth_mask(gt).tolist() == [False, False, False, True, False, True]
    assert valid_depth_mask(gt, mask).tolist() == [False, False, False, True, False, False]


def test_aligned_prediction_is_clipped_to_the_minimum_depth():
    gt = torch.tensor([1.0, 2.0, 3.0, 4.0])
    pred = torch.tensor([1.0, 2.0, 3.0, -50.0])  # the fit will push the last value far below zero
    metrics = compute_depth_metrics(pred, gt, torch.tensor([True, True, True, False]), min_depth=0.5)
    assert math.isfinite(metrics['rmse_log']) and metrics['abs_rel'] == pytest.approx(0.0, abs=1e-12)


def test_constant_prediction_is_rejected_with_a_clear_error():
    with pytest.raises(ValueError, match='constant'):
        least_squares_scale_shift(torch.ones(5), torch.rand(5) + 1, torch.ones(5, dtype=torch.bool))


def _sample(scene, pred, gt, mask=None):
    sample = dict(pred_depth=pred, gt_depth=gt, scene=scene, frame_names=[f'f{i}' for i in range(len(pred))])
    if mask is not None:
        sample['valid_mask'] = mask
    return sample


def test_depth_metric_averages_per_image_and_per_scene():
    gt_a = torch.rand(1, 4, 4) + 1
    gt_b = torch.tensor([[[1.0, 2.0], [4.0, 5.0]], [[1.0, 1.0], [1.0, 1.0]]])
    pred_b = torch.tensor([[[1.1, 1.5], [4.0, 10.0]], [[9.0, 9.0], [9.0, 9.0]]])
    no_valid = torch.stack([torch.ones(2, 2, dtype=torch.bool), torch.zeros(2, 2, dtype=torch.bool)])
    metric = DepthMetric(alignment='none')
    metric.process(None, [_sample('a', gt_a.clone(), gt_a), _sample('b', pred_b, gt_b, no_valid)])
    out = metric.compute_metrics(metric.results)
    assert [len(r['frames']) for r in metric.results] == [1, 1]  # one result per sample; the empty frame skipped
    assert out['a/abs_rel'] == pytest.approx(0.0)
    assert out['b/abs_rel'] == pytest.approx(0.3375)
    assert out['abs_rel'] == pytest.approx(0.3375 / 2)
    assert out['b/delta1'] == pytest.approx(0.5) and out['delta1'] == pytest.approx(0.75)
    assert out['b/mae'] == pytest.approx((0.1 + 0.5 + 0 + 5.0) / 4) and out['mae'] == pytest.approx(5.6 / 8)
    assert 'val_loss' not in out


def test_depth_metric_reports_the_mean_validation_loss():
    gt = torch.rand(1, 4, 4) + 1
    metric = DepthMetric(alignment='none')
    metric.process(None, [dict(_sample('a', gt.clone(), gt), val_loss=2.0), dict(_sample('a', gt, gt), val_loss=3.0),
                          dict(_sample('b', gt, gt), val_loss=torch.tensor(7.0))])
    out = metric.evaluate(size=3)
    assert out['depth/val_loss'] == pytest.approx(4.0) and 'depth/a/val_loss' not in out


def test_sequence_alignment_shares_one_scale_across_views():
    gt = torch.rand(2, 5, 5) + 1
    pred = torch.stack([gt[0] * 2.0, gt[1] * 4.0])  # each view has its own scale
    per_frame, per_seq = DepthMetric(align_per='frame'), DepthMetric(align_per='sequence')
    for metric in (per_frame, per_seq):
        metric.process(None, [_sample('s', pred, gt)])
    assert per_frame.compute_metrics(per_frame.results)['abs_rel'] == pytest.approx(0.0, abs=1e-9)
    assert per_seq.compute_metrics(per_seq.results)['abs_rel'] > 0.05


def test_depth_metric_rejects_bad_arguments_and_shapes():
    with pytest.raises(ValueError, match='alignment'):
        DepthMetric(alignment='scale')
    metric = DepthMetric()
    with pytest.raises(ValueError, match='shape'):
        metric.process(None, [_sample('s', torch.rand(1, 3, 3), torch.rand(1, 4, 4))])


def test_evaluate_keeps_every_frame_of_every_sequence():
    """MMEngine truncates the gathered results to len(dataset): one result per sequence, not per frame."""
    gt = torch.rand(3, 4, 4) + 1
    metric = DepthMetric(alignment='none')
    metric.process(None, [_sample('a', gt.clone(), gt), _sample('b', gt * 2, gt)])
    out = metric.evaluate(size=2)
    assert out['depth/a/abs_rel'] == pytest.approx(0.0) and out['depth/b/abs_rel'] == pytest.approx(1.0)
    assert out['depth/abs_rel'] == pytest.approx(0.5)
