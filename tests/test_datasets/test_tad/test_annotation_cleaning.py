"""Training targets are cleaned as OpenTAD's THUMOS datasets clean them (the evaluation has its own rules)."""
import json

import numpy as np

from opentad_lora.datasets.tad import load_annotations


def test_repeated_instances_and_ambiguous_are_dropped_zero_length_stays(tmp_path):
    anns = [dict(segment=[1.0, 2.0], label='Diving'), dict(segment=[1.0, 2.0], label='Diving'),  # repeat: dropped
            dict(segment=[1.0, 2.0], label='Billiards'),  # same time, other class: kept
            dict(segment=[1.0005, 2.0], label='Diving'),  # not an exact repeat: kept
            dict(segment=[3.0, 3.0], label='Diving'),  # zero length: kept (OpenTAD's filter_gt=False)
            dict(segment=[4.0, 5.0], label='Ambiguous')]  # never a target
    path = tmp_path / 'anno.json'
    path.write_text(json.dumps(dict(database=dict(v=dict(subset='training', duration=10.0, annotations=anns)))))
    (video, ) = load_annotations(str(path), ['Billiards', 'Diving'], 'training')
    np.testing.assert_allclose(video.segments, [[1.0, 2.0], [1.0, 2.0], [1.0005, 2.0], [3.0, 3.0]])
    assert video.labels.tolist() == [1, 0, 1, 1]
