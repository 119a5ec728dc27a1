"""Detection AP maths on hand-made cases whose answers are worked out by hand in each test."""
import numpy as np
import pytest

from opentad_lora.evaluation.tad.functional import (average_precision_detection, interpolated_average_precision,
                                                     mean_average_precision, segment_iou)

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)


def class_ap(gt, dets, thresholds):
    """AP of one class from ``{video: (K, 2) segments}`` and ``[(video, start, end, score)]``."""
    gt_videos = [video for video, segs in gt.items() for _ in segs]
    gt_segments = np.concatenate([np.asarray(segs, dtype=float).reshape(-1, 2) for segs in gt.values()])
    return average_precision_detection(gt_videos, gt_segments, [d[0] for d in dets],
                                       np.array([d[1:3] for d in dets], dtype=float).reshape(-1, 2),
                                       np.array([d[3] for d in dets], dtype=float), thresholds)


def test_segment_iou_matches_hand_values():
    ious = segment_iou(np.array([0.0, 10.0]), np.array([[0, 10], [5, 15], [10, 20], [2, 4]]))
    np.testing.assert_allclose(ious, [1.0, 5 / 15, 0.0, 0.2])


def test_perfect_detections_give_ap_one():
    gt = {'v1': np.array([[1.0, 3.0], [5.0, 9.0]]), 'v2': np.array([[0.0, 2.0]])}
    dets = [('v1', 1.0, 3.0, 0.2), ('v1', 5.0, 9.0, 0.9), ('v2', 0.0, 2.0, 0.5)]
    np.testing.assert_allclose(class_ap(gt, dets, THRESHOLDS), np.ones(5))


def test_shift_counts_only_at_thresholds_below_its_tiou():
    gt = {'v': np.array([[2.5, 12.5]])}
    shifted = [('v', 0.0, 10.0, 0.9)]  # tIoU = 7.5 / 12.5 = 0.6
    np.testing.assert_allclose(class_ap(gt, shifted, THRESHOLDS), [1, 1, 1, 1, 0])
    far = [('v', 9.0, 19.0, 0.9)]  # tIoU = 3.5 / 16.5 < 0.3
    np.testing.assert_allclose(class_ap(gt, far, THRESHOLDS), np.zeros(5))


def test_duplicates_are_false_positives():
    # ranks: A (TP), A again (FP: A is taken), B (TP) -> precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1
    # interpolated: 1/2 * 1 + 1/2 * 2/3 = 5/6
    gt = {'v': np.array([[0.0, 4.0], [10.0, 14.0]])}
    dets = [('v', 0.0, 4.0, 0.9), ('v', 0.0, 4.0, 0.8), ('v', 10.0, 14.0, 0.7)]
    np.testing.assert_allclose(class_ap(gt, dets, [0.5]), [5 / 6])


def test_missing_ground_truth_lowers_recall():
    gt = {'v': np.array([[0.0, 4.0], [10.0, 14.0]]), 'w': np.array([[1.0, 2.0]])}
    dets = [('v', 0.0, 4.0, 0.9)]  # one of three found, precision 1 -> AP = 1/3
    np.testing.assert_allclose(class_ap(gt, dets, [0.5]), [1 / 3])


def test_hand_computed_interpolated_ap():
    # TP FP TP FP TP over 3 ground truths: precision 1, .5, 2/3, .5, .6 at recall 1/3, 1/3, 2/3, 2/3, 1;
    # monotone envelope 1, 2/3, .6 at the recall steps -> (1 + 2/3 + .6) / 3
    expected = (1 + 2 / 3 + 0.6) / 3
    precision = np.array([1, 0.5, 2 / 3, 0.5, 0.6])
    recall = np.array([1, 1, 2, 2, 3]) / 3
    assert interpolated_average_precision(precision, recall) == pytest.approx(expected)
    gt = {'v': np.array([[0.0, 1.0], [10.0, 11.0], [20.0, 21.0]])}
    dets = [('v', 0.0, 1.0, 0.9), ('v', 30.0, 31.0, 0.8), ('v', 10.0, 11.0, 0.7), ('v', 40.0, 41.0, 0.6),
            ('v', 20.0, 21.0, 0.5)]
    assert class_ap(gt, dets, [0.5])[0] == pytest.approx(expected)


def test_prediction_is_matched_to_its_best_unmatched_ground_truth():
    # the top prediction reaches tIoU 0.5 with both actions (7/13 and 9/11) and takes the second; the next one
    # only overlaps the first enough (8/10) and matches it. Taking the first action first would give AP 1/2.
    gt = {'v': np.array([[0.0, 10.0], [4.0, 14.0]])}
    dets = [('v', 3.0, 13.0, 0.9), ('v', 0.0, 8.0, 0.8)]
    np.testing.assert_allclose(class_ap(gt, dets, [0.5]), [1.0])


def test_unknown_video_and_empty_predictions():
    gt = {'v': np.array([[0.0, 4.0]])}
    # a detection on a video without this class's ground truth is a false positive ranked first: AP = 1/2
    dets = [('other', 0.0, 4.0, 0.9), ('v', 0.0, 4.0, 0.8)]
    np.testing.assert_allclose(class_ap(gt, dets, [0.5]), [0.5])
    np.testing.assert_allclose(class_ap(gt, [], THRESHOLDS), np.zeros(5))


def test_mean_is_over_ground_truth_labels_only():
    # labels: 'a' found (AP 1), 'c' missed (AP 0); 'b' has detections but no ground truth: not evaluated
    gt = [('v', 0.0, 4.0, 'c'), ('v', 0.0, 4.0, 'a'), ('w', 10.0, 14.0, 'c')]
    dets = [('v', 0.0, 4.0, 'a', 0.9), ('v', 20.0, 24.0, 'b', 0.9), ('w', 30.0, 34.0, 'c', 0.5)]
    classes, ap, mean_ap = mean_average_precision(gt, dets, tiou_thresholds=THRESHOLDS)
    assert classes == ['c', 'a']  # order of first appearance in the ground truth
    np.testing.assert_allclose(ap, [np.zeros(5), np.ones(5)])
    np.testing.assert_allclose(mean_ap, np.full(5, 0.5))
    assert mean_average_precision([], dets, THRESHOLDS)[2].tolist() == [0.0] * 5


def test_segment_iou_of_degenerate_union_is_zero_not_nan():
    # the union is clipped at 1e-8 (two zero-length segments at the same time)
    assert segment_iou(np.array([5.0, 5.0]), np.array([[5.0, 5.0]])).tolist() == [0.0]
