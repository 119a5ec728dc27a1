"""Temporal NMS, Gaussian soft-NMS, score voting and per-video post-processing on hand-made segments."""
import math

import pytest
import torch

from opentad_lora.models.tad.post_processing import (TADPostProcessor, merge_windows, nms, pairwise_tiou,
                                                     score_voting, soft_nms)

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


def test_hard_nms_removes_only_above_threshold():
    assert nms(SEGMENTS, SCORES, iou_threshold=0.5).tolist() == [0, 2]
    assert nms(SEGMENTS, SCORES, iou_threshold=0.9).tolist() == [0, 1, 2]
    assert nms(SEGMENTS[:0], SCORES[:0], iou_threshold=0.5).numel() == 0


def test_score_voting_averages_overlapping_boundaries():
    refined = score_voting(SEGMENTS[:1], SEGMENTS, SCORES, iou_threshold=0.7)
    w_a, w_b = 1.0 * (0.9 + 1.5), IOU_AB * (0.8 + 1.5)  # C does not overlap: weight 0
    expected = (w_a * SEGMENTS[0] + w_b * SEGMENTS[1]) / (w_a + w_b)
    torch.testing.assert_close(refined[0], expected)


def test_post_processor_suppresses_within_a_class_only_when_multiclass():
    labels = torch.tensor([0, 1, 0])
    hard = dict(use_soft_nms=False, iou_threshold=0.5)
    segs, scores, out_labels = TADPostProcessor(nms=dict(hard, multiclass=True))(SEGMENTS, SCORES, labels)
    assert scores.tolist() == pytest.approx([0.9, 0.8, 0.7]) and out_labels.tolist() == [0, 1, 0]
    segs, scores, out_labels = TADPostProcessor(nms=dict(hard, multiclass=False))(SEGMENTS, SCORES, labels)
    assert scores.tolist() == pytest.approx([0.9, 0.7]) and out_labels.tolist() == [0, 0]
    torch.testing.assert_close(segs, SEGMENTS[[0, 2]])


def test_post_processor_keeps_the_best_max_seg_num_and_rejects_unknown_keys():
    labels = torch.tensor([0, 1, 2])
    segs, scores, _ = TADPostProcessor(nms=dict(max_seg_num=2))(SEGMENTS, SCORES, labels)
    assert scores.tolist() == pytest.approx([0.9, 0.8])
    with pytest.raises(KeyError, match='sigmaa'):
        TADPostProcessor(nms=dict(sigmaa=0.5))


def test_merge_windows_pools_by_video():
    windows = [dict(video_name='a', pred_segments=[[0, 1]], pred_scores=[0.5], pred_labels=[1]),
               dict(video_name='b', pred_segments=[[2, 3]], pred_scores=[0.6], pred_labels=[0]),
               dict(video_name='a', pred_segments=[[4, 5], [6, 7]], pred_scores=[0.7, 0.8], pred_labels=[0, 1])]
    merged = merge_windows(windows)
    assert sorted(merged) == ['a', 'b']
    torch.testing.assert_close(merged['a']['segments'], torch.tensor([[0.0, 1.0], [4.0, 5.0], [6.0, 7.0]]))
    assert merged['a']['labels'].tolist() == [1, 0, 1]
