"""Temporal NMS, soft-NMS, score voting and per-video post-processing on hand-made segments (OpenTAD's rules)."""
import math

import numpy as np
import pytest
import torch

from opentad_lora.models.tad.post_processing import (TADPostProcessor, merge_windows, nms, pairwise_tiou,
                                                     round_half_even, score_voting, soft_nms)

# A and B overlap with tIoU 9/11; C is disjoint from both.
SEGMENTS = torch.tensor([[0.0, 10.0], [1.0, 11.0], [20.0, 30.0]])
SCORES = torch.tensor([0.9, 0.8, 0.7])
IOU_AB = 9 / 11


def test_pairwise_tiou():
    torch.testing.assert_close(pairwise_tiou(SEGMENTS, SEGMENTS[:2]),
                               torch.tensor([[1.0, IOU_AB], [IOU_AB, 1.0], [0.0, 0.0]]))


def test_soft_nms_decays_overlapping_and_keeps_disjoint():
    keep, scores = soft_nms(SEGMENTS, SCORES, sigma=0.5, min_score=0.001)
    decayed_b = 0.8 * math.exp(-IOU_AB ** 2 / 0.5)
    assert keep.tolist() == [0, 2, 1]  # B fell below C
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.7, decayed_b]))


def test_soft_nms_drops_below_min_score_and_caps_count():
    keep, _ = soft_nms(SEGMENTS, SCORES, sigma=0.5, min_score=0.3)
    assert keep.tolist() == [0, 2]
    keep, scores = soft_nms(SEGMENTS, SCORES, sigma=0.5, min_score=0.001, max_num=1)
    assert keep.tolist() == [0] and scores.tolist() == pytest.approx([0.9])


def test_soft_nms_breaks_ties_by_position_in_its_swapped_working_array():
    # three disjoint segments, the best one last: it is swapped with the first, so of the two tied 0.5s the one
    # that was second now comes first (a stable sort would give [2, 0, 1])
    segments = torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]])
    keep, _ = soft_nms(segments, torch.tensor([0.5, 0.5, 0.9]), sigma=0.5)
    assert keep.tolist() == [2, 1, 0]
    # a dropped entry's place is taken by the last one: B (a copy of A) decays to 0.85 * e^-2 < 0.2 and its place
    # goes to E, which then wins the tie with D
    segments = torch.tensor([[0.0, 10.0], [0.0, 10.0], [20.0, 21.0], [30.0, 31.0]])
    keep, scores = soft_nms(segments, torch.tensor([0.9, 0.85, 0.3, 0.3]), sigma=0.5, min_score=0.2)
    assert keep.tolist() == [0, 3, 2]
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.3, 0.3]))


def test_overlaps_add_a_length_epsilon():
    # two copies of a 1e-6 s segment overlap by 1e-6 / (2e-6 + 2e-6 - 1e-6) = 1/3, not 1
    tiny = torch.tensor([[5.0, 5.000001], [5.0, 5.000001]], dtype=torch.float64).float()
    length = float(tiny[0, 1] - tiny[0, 0])
    overlap = length / (2 * (length + 1e-6) - length)
    assert nms(tiny, torch.tensor([0.9, 0.8]), iou_threshold=overlap + 0.01).tolist() == [0, 1]
    assert nms(tiny, torch.tensor([0.9, 0.8]), iou_threshold=overlap - 0.01).tolist() == [0]
    # zero-length copies do not overlap (no 0/0): neither is decayed
    zero = torch.tensor([[7.0, 7.0], [7.0, 7.0]])
    keep, scores = soft_nms(zero, torch.tensor([0.9, 0.8]), sigma=0.5)
    assert keep.tolist() == [0, 1] and scores.tolist() == pytest.approx([0.9, 0.8])


def test_hard_nms_removes_at_threshold_and_drops_low_scores_first():
    assert nms(SEGMENTS, SCORES, iou_threshold=0.5).tolist() == [0, 2]
    assert nms(SEGMENTS, SCORES, iou_threshold=0.9).tolist() == [0, 1, 2]
    assert nms(SEGMENTS, SCORES, iou_threshold=0.9, min_score=0.7).tolist() == [0, 1]  # strictly above
    assert nms(SEGMENTS[:0], SCORES[:0], iou_threshold=0.5).numel() == 0


def test_score_voting_is_the_score_weighted_mean_of_the_close_candidates():
    refined = score_voting(SEGMENTS[:1], SEGMENTS, SCORES, iou_threshold=0.7)
    expected = (0.9 * SEGMENTS[0] + 0.8 * SEGMENTS[1]) / (0.9 + 0.8)  # C is below the threshold: left out
    torch.testing.assert_close(refined[0], expected)


def test_score_voting_keeps_a_zero_length_segment_where_it_is():
    kept = torch.tensor([[50.0, 50.0]])
    torch.testing.assert_close(score_voting(kept, torch.cat([SEGMENTS, kept]), torch.tensor([0.9, 0.8, 0.7, 0.6]),
                                            iou_threshold=0.7), kept)


def test_voting_is_off_for_multiclass_and_on_for_class_agnostic():
    labels = torch.tensor([0, 0, 1])
    cfg = dict(use_soft_nms=True, sigma=0.5, voting_thresh=0.7)
    segs, _, _ = TADPostProcessor(nms=dict(cfg, multiclass=True))(SEGMENTS, SCORES, labels)
    torch.testing.assert_close(segs, SEGMENTS[[0, 2, 1]].double())  # boundaries untouched
    segs, _, _ = TADPostProcessor(nms=dict(cfg, multiclass=False))(SEGMENTS, SCORES, labels)
    voted = (0.9 * SEGMENTS[0] + 0.8 * SEGMENTS[1]) / 1.7
    torch.testing.assert_close(segs[0], torch.round(voted.double() * 100) / 100)


def test_post_processor_suppresses_within_a_class_only_when_multiclass():
    labels = torch.tensor([0, 1, 0])
    hard = dict(use_soft_nms=False, iou_threshold=0.5)
    segs, scores, out_labels = TADPostProcessor(nms=dict(hard, multiclass=True))(SEGMENTS, SCORES, labels)
    assert scores.tolist() == pytest.approx([0.9, 0.8, 0.7]) and out_labels.tolist() == [0, 1, 0]
    segs, scores, out_labels = TADPostProcessor(nms=dict(hard, multiclass=False))(SEGMENTS, SCORES, labels)
    assert scores.tolist() == pytest.approx([0.9, 0.7]) and out_labels.tolist() == [0, 0]
    torch.testing.assert_close(segs, SEGMENTS[[0, 2]].double())


def test_rounding_is_pythons_round_on_float32_values():
    values = torch.from_numpy(np.random.default_rng(0).uniform(-5, 500, 20000).astype(np.float32))
    for decimals in (2, 4):
        assert round_half_even(values, decimals).tolist() == [round(v, decimals) for v in values.tolist()]


def test_post_processor_rounds_before_suppressing_and_after():
    # 0.90004 and 0.89996 both store as 0.9: the tie goes to the first one, and boundaries come out at 1e-2 s
    segments = torch.tensor([[0.004, 10.006], [0.0, 10.0]])
    segs, scores, _ = TADPostProcessor(nms=dict(sigma=0.5))(segments, torch.tensor([0.89996, 0.90004]),
                                                          torch.tensor([0, 0]))
    assert segs.tolist() == [[0.0, 10.01], [0.0, 10.0]]
    assert scores.tolist() == [0.9, round(0.9 * math.exp(-(10 / 10.01) ** 2 / 0.5), 4)]


def test_post_processor_keeps_the_best_max_seg_num_and_rejects_unknown_keys():
    labels = torch.tensor([0, 1, 2])
    segs, scores, _ = TADPostProcessor(nms=dict(max_seg_num=2))(SEGMENTS, SCORES, labels)
    assert scores.tolist() == pytest.approx([0.9, 0.8])
    with pytest.raises(KeyError, match='sigmaa'):
        TADPostProcessor(nms=dict(sigmaa=0.5))
    with pytest.raises(ValueError, match='method'):
        TADPostProcessor(nms=dict(method=4))


def test_merge_windows_pools_by_video():
    windows = [dict(video_name='a', pred_segments=[[0, 1]], pred_scores=[0.5], pred_labels=[1]),
               dict(video_name='b', pred_segments=[[2, 3]], pred_scores=[0.6], pred_labels=[0]),
               dict(video_name='a', pred_segments=[[4, 5], [6, 7]], pred_scores=[0.7, 0.8], pred_labels=[0, 1])]
    merged = merge_windows(windows)
    assert list(merged) == ['a', 'b']
    torch.testing.assert_close(merged['a']['segments'], torch.tensor([[0.0, 1.0], [4.0, 5.0], [6.0, 7.0]]))
    assert merged['a']['labels'].tolist() == [1, 0, 1]
