"""TADmAPMetric on a THUMOS-like annotation file, against OpenTAD's evaluation rules restated here.

The file holds what real THUMOS-14 annotations hold: repeated instances, near-repeats (within 1 ms), zero- and
negative-length instances, ``Ambiguous`` instances, a class found only in the training subset; the predictions
include labels without ground truth and a video outside the subset.
"""
import json

import numpy as np
import pytest

from opentad_lora.evaluation.tad import TADmAPMetric, clean_instances

CLASSES = ['BaseballPitch', 'Billiards', 'Diving', 'Shotput']  # Shotput only in the training subset
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
NO_SUPPRESSION = dict(nms=dict(use_soft_nms=False, iou_threshold=1.1, max_seg_num=100000))


def thumos_like_database(rng):
    database = {}
    for v in range(6):
        anns = []
        for _ in range(8):
            start = round(float(rng.uniform(0, 80)), 1)
            anns.append(dict(segment=[start, round(start + float(rng.uniform(1, 8)), 1)],
                             label=str(rng.choice(['BaseballPitch', 'Billiards', 'Diving', 'Ambiguous']))))
        (start, end), label = anns[0]['segment'], anns[0]['label']
        other = 'Diving' if label != 'Diving' else 'Billiards'
        anns += [dict(segment=[start, end], label=label),  # repeated
                 dict(segment=[start + 5e-4, end - 5e-4], label=label),  # within 1 ms: repeated
                 dict(segment=[start + 0.01, end], label=label),  # 10 ms later: another action
                 dict(segment=[start, end], label=other),  # same time, other label: another action
                 dict(segment=[end, end], label=label),  # zero length
                 dict(segment=[end, start], label=other)]  # negative length
        rng.shuffle(anns)
        database[f'video_test_{v:07d}'] = dict(subset='validation', duration=100.0, frame=3000, annotations=anns)
    database['video_validation_0000001'] = dict(subset='training', duration=100.0, frame=3000, annotations=[
        dict(segment=[1.0, 3.0], label='Shotput')])
    return database


def random_windows(rng, database):
    """Two windows per video: noisy copies of the actions (some mislabelled), distinct scores at 1e-4."""
    rows = []
    for video, info in database.items():
        for ann in info['annotations']:
            for _ in range(int(rng.integers(0, 3))):
                start, end = np.array(ann['segment']) + rng.normal(0, 0.8, 2)
                label = ann['label'] if ann['label'] in CLASSES and rng.uniform() < 0.8 else rng.choice(CLASSES)
                rows.append((video, round(float(start), 2), round(float(max(start, end)), 2), CLASSES.index(label)))
    scores = rng.permutation(len(rows)) + 1
    windows = []
    for video in database:
        mine = [(row, score / 10000) for row, score in zip(rows, scores) if row[0] == video]
        for half in (mine[::2], mine[1::2]):
            windows.append(dict(video_name=video, pred_segments=np.array([r[1:3] for r, _ in half]).reshape(-1, 2),
                                pred_scores=np.array([s for _, s in half]), pred_labels=np.array([r[3] for r, _ in half])))
    detections = [(row[0], row[1], row[2], CLASSES[row[3]], score / 10000) for row, score in zip(rows, scores)]
    return windows, detections


def reference_map(database, detections, clean=True):
    """mAP per threshold by OpenTAD's rules, written out plainly."""
    actions = {}
    for video, info in database.items():
        if info['subset'] != 'validation':
            continue
        kept = []
        for ann in info['annotations']:
            (start, end), label = ann['segment'], ann['label']
            if clean and (end <= start or any(label == l and abs(start - s) <= 1e-3 and abs(end - e) <= 1e-3
                                              for s, e, l in kept)):
                continue
            kept.append((start, end, label))
        for start, end, label in kept:
            actions.setdefault(label, []).append((video, start, end))
    table = []
    for label, truth in actions.items():  # every label of the subset's ground truth, Ambiguous included
        ranked = sorted((d for d in detections if d[3] == label), key=lambda d: -d[4])
        row = []
        for threshold in THRESHOLDS:
            taken, hits = set(), []
            for video, start, end, _, _ in ranked:
                best, best_iou = None, -1.0
                for k, (v, s, e) in enumerate(truth):
                    if v == video and k not in taken:
                        inter = max(0.0, min(end, e) - max(start, s))
                        iou = inter / max((end - start) + (e - s) - inter, 1e-8)
                        if iou > best_iou:
                            best, best_iou = k, iou
                hits.append(best is not None and best_iou >= threshold)
                if hits[-1]:
                    taken.add(best)
            true_pos = np.cumsum(hits)
            precision = true_pos / np.arange(1, len(hits) + 1)
            recall = true_pos / len(truth)
            ap, reached = 0.0, 0.0  # each recall gain counts the best precision from there on
            for k in range(len(hits)):
                if recall[k] > reached:
                    ap += (recall[k] - reached) * precision[k:].max()
                    reached = recall[k]
            row.append(ap)
        table.append(row)
    return np.mean(table, axis=0)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_map_equals_opentads_rules_on_a_thumos_like_file(tmp_path, seed):
    rng = np.random.default_rng(seed)
    database = thumos_like_database(rng)
    ann_file = tmp_path / 'thumos_like.json'
    ann_file.write_text(json.dumps(dict(database=database)))
    windows, detections = random_windows(rng, database)
    metric = TADmAPMetric(ann_file=str(ann_file), subset='validation', post_processing=NO_SUPPRESSION)
    metric.dataset_meta = dict(classes=CLASSES)
    metric.process({}, windows)
    metrics = metric.evaluate(len(windows))
    ours = np.array([metrics[f'tad/mAP@{t:.2f}'] for t in THRESHOLDS])
    expected = reference_map(database, detections)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-12)
    assert metrics['tad/average_mAP'] == pytest.approx(expected.mean(), abs=1e-12)
    # the file does exercise the cleaning: counting every instance gives a clearly lower number
    assert reference_map(database, detections, clean=False).mean() < expected.mean() - 0.01


def test_clean_instances_drops_non_positive_lengths_and_near_repeats_of_kept_ones():
    anns = [dict(segment=[1.0, 2.0], label='a'), dict(segment=[1.0009, 1.9991], label='a'),
            dict(segment=[1.002, 2.0], label='a'), dict(segment=[1.0, 2.0], label='b'),
            dict(segment=[3.0, 3.0], label='a'), dict(segment=[4.0, 3.5], label='a'),
            dict(segment=[1.0025, 2.0], label='a')]  # within 1 ms of the third (kept), not of the first
    assert [a['segment'] for a in clean_instances(anns)] == [[1.0, 2.0], [1.002, 2.0], [1.0, 2.0]]
