"""TADmAPMetric: windows merged per video, NMS, videos without ground truth, empty predictions, result file."""
import json

import numpy as np
import pytest

from opentad_lora.evaluation.tad import TADmAPMetric, load_ground_truth, load_result_file, mean_average_precision

CLASSES = ['Billiards', 'Diving', 'Shotput']  # Shotput has no ground truth in the evaluated subset


@pytest.fixture
def ann_file(tmp_path):
    database = {
        'v1': dict(subset='validation', duration=20.0, frame=200, annotations=[
            dict(segment=[2.0, 5.0], label='Billiards'), dict(segment=[10.0, 14.0], label='Diving')]),
        'v2': dict(subset='validation', duration=10.0, frame=100, annotations=[
            dict(segment=[1.0, 3.0], label='Billiards')]),
        'train1': dict(subset='training', duration=10.0, frame=100, annotations=[
            dict(segment=[1.0, 3.0], label='Shotput')]),
    }
    path = tmp_path / 'anno.json'
    path.write_text(json.dumps(dict(database=database)))
    return str(path)


def window(video, segments, scores, labels):
    return dict(video_name=video, pred_segments=np.array(segments, dtype=np.float32).reshape(-1, 2),
                pred_scores=np.array(scores, dtype=np.float32), pred_labels=np.array(labels))


def evaluate(ann_file, windows, **kwargs):
    metric = TADmAPMetric(ann_file=ann_file, subset='validation', **kwargs)
    metric.dataset_meta = dict(classes=CLASSES)
    metric.process({}, windows)
    return metric.evaluate(len(windows))


def test_perfect_predictions_split_over_overlapping_windows(ann_file, tmp_path):
    # v1's first action is seen by two overlapping windows: soft-NMS decays the duplicate below the true positives
    windows = [window('v1', [[2, 5], [10, 14]], [0.9, 0.8], [0, 1]), window('v1', [[2, 5]], [0.85], [0]),
               window('v2', [[1, 3]], [0.7], [0])]
    result_file = tmp_path / 'out' / 'results.json'
    metrics = evaluate(ann_file, windows, result_file=str(result_file))
    for t in ('0.30', '0.40', '0.50', '0.60', '0.70'):
        assert metrics[f'tad/mAP@{t}'] == pytest.approx(1.0)
    assert metrics['tad/average_mAP'] == pytest.approx(1.0)
    results = json.loads(result_file.read_text())['results']
    assert sorted(results) == ['v1', 'v2']
    assert results['v1'][0] == dict(segment=[2.0, 5.0], label='Billiards', score=pytest.approx(0.9))


def test_hard_nms_removes_the_cross_window_duplicate_soft_nms_decays_it(ann_file, tmp_path):
    windows = [window('v1', [[2, 5]], [0.5], [0]), window('v1', [[2.1, 5]], [0.9], [0])]
    hard, soft = tmp_path / 'hard.json', tmp_path / 'soft.json'
    metrics = evaluate(ann_file, windows, result_file=str(hard),
                       post_processing=dict(nms=dict(use_soft_nms=False, iou_threshold=0.5)))
    evaluate(ann_file, windows, result_file=str(soft), post_processing=dict(nms=dict(sigma=0.5)))
    assert [d['score'] for d in json.loads(hard.read_text())['results']['v1']] == pytest.approx([0.9])
    iou = 2.9 / 3.0
    expected_soft = [0.9, 0.5 * np.exp(-iou ** 2 / 0.5)]
    assert [d['score'] for d in json.loads(soft.read_text())['results']['v1']] == pytest.approx(expected_soft,
                                                                                                abs=1e-4)
    # Billiards: 1 of 2 actions found (AP 1/2), Diving: none (AP 0) -> 1/4
    assert metrics['tad/average_mAP'] == pytest.approx(0.25)


def test_predictions_for_videos_without_ground_truth_are_false_positives(ann_file):
    windows = [window('v1', [[2, 5], [10, 14]], [0.9, 0.8], [0, 1]), window('train1', [[1, 3]], [0.99], [0]),
               window('not_in_json', [[1, 3]], [0.99], [0])]
    metrics = evaluate(ann_file, windows)
    # Billiards: FP, FP, then v1's TP (precision 1/3 at recall 1/2; v2 has no prediction) -> AP 1/6; Diving: 1;
    # Shotput has no ground truth in the subset: left out -> (1/6 + 1) / 2
    assert metrics['tad/average_mAP'] == pytest.approx(7 / 12)


def test_no_predictions_give_zero(ann_file):
    metrics = evaluate(ann_file, [window('v1', np.zeros((0, 2)), [], [])])
    assert metrics['tad/average_mAP'] == 0.0


def test_class_names_are_required(ann_file):
    metric = TADmAPMetric(ann_file=ann_file)
    metric.process({}, [window('v1', [[2, 5]], [0.9], [0])])
    with pytest.raises(ValueError, match='class_map'):
        metric.evaluate(1)


def test_result_file_is_opentads_format_and_gives_the_same_map(ann_file, tmp_path):
    windows = [window('v1', [[2.004, 5.1], [9, 14], [2, 5]], [0.8, 0.7, 0.123456], [0, 1, 0]),
               window('v2', [[0.5, 3]], [0.6], [0])]
    result_file = tmp_path / 'result_detection.json'
    metrics = evaluate(ann_file, windows, result_file=str(result_file))
    data = json.loads(result_file.read_text())
    assert set(data) == {'results', 'version', 'external_data'}  # OpenTAD's evaluator reads "results"
    assert list(data['results']) == ['v1', 'v2']
    for dets in data['results'].values():
        for det in dets:
            assert set(det) == {'segment', 'label', 'score'} and len(det['segment']) == 2
            assert det['label'] in CLASSES and round(det['score'], 4) == det['score']
            assert [round(x, 2) for x in det['segment']] == det['segment']
    assert data['results']['v1'][0] == dict(segment=[2.0, 5.1], label='Billiards', score=0.8)
    _, _, mean_ap = mean_average_precision(load_ground_truth(ann_file, 'validation'), load_result_file(str(result_file)),
                                           (0.3, 0.4, 0.5, 0.6, 0.7))
    assert metrics['tad/average_mAP'] == float(mean_ap.mean()) > 0


def test_a_subset_without_ground_truth_stops_with_an_error(ann_file):
    metric = TADmAPMetric(ann_file=ann_file, subset='testing')
    metric.dataset_meta = dict(classes=CLASSES)
    metric.process({}, [window('v1', [[2, 5]], [0.9], [0])])
    with pytest.raises(ValueError, match="no ground truth .* subset 'testing'"):
        metric.evaluate(1)


def test_a_class_index_beyond_the_class_map_stops_with_an_error(ann_file):
    with pytest.raises(ValueError, match='class map has 3 classes'):
        evaluate(ann_file, [window('v1', [[2, 5]], [0.9], [3])])
