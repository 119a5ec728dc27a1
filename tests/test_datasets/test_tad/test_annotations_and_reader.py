"""OpenTAD annotation parsing and OpenCV frame reading (mp4 and frame folders), including bad files."""
import json

import numpy as np
import pytest

from opentad_lora.datasets.tad import VideoReader, load_annotations, load_class_map

CLASSES = ['BaseballPitch', 'Billiards']  # as written by conftest.py


def test_class_map_and_annotations(thumos_dir):
    classes = load_class_map(str(thumos_dir / 'category_idx.txt'))
    assert classes == CLASSES
    (video, ) = load_annotations(str(thumos_dir / 'anno.json'), classes, 'training')
    assert video.video_name == 'video_validation_1' and video.num_frames == 70 and video.fps == pytest.approx(10)
    np.testing.assert_allclose(video.segments, [[0.5, 2.0], [4.0, 6.5]])  # 'Ambiguous' is skipped
    assert video.labels.tolist() == [1, 0]
    assert len(load_annotations(str(thumos_dir / 'anno.json'), classes)) == 2


def test_bad_annotation_inputs_name_the_file(thumos_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match='missing.txt'):
        load_class_map(str(tmp_path / 'missing.txt'))
    bad = tmp_path / 'bad.json'
    bad.write_text(json.dumps(dict(database=dict(v=dict(subset='training', duration=1.0, annotations=[
        dict(segment=[0, 1], label='Golf')])))))
    with pytest.raises(ValueError, match=r"bad\.json: video v has label 'Golf'"):
        load_annotations(str(bad), CLASSES)
    bad.write_text('[1, 2]')
    with pytest.raises(ValueError, match='bad.json is not an annotation JSON'):
        load_annotations(str(bad), CLASSES)


def frame_levels(frames: np.ndarray) -> np.ndarray:
    return frames.reshape(len(frames), -1).mean(1)


def test_mp4_reader_returns_requested_frames(thumos_dir, decoded):
    reader = VideoReader(str(thumos_dir / 'video' / 'video_validation_1.mp4'))
    assert reader.num_frames == 70
    frames = reader.read([40, 5, 69, 5, 100])  # any order, repeats, past the end -> last frame
    assert frames.shape == (5, 32, 40, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames, decoded['video_validation_1'][[40, 5, 69, 5, 69]])
    np.testing.assert_allclose(frame_levels(frames), [100, 30, 158, 30, 158], atol=5)  # grey level 20 + 2 t


def test_frame_folder_reads_like_the_mp4(thumos_dir):
    folder = VideoReader(str(thumos_dir / 'frames' / 'video_test_1'))
    mp4 = VideoReader(str(thumos_dir / 'video' / 'video_test_1.mp4'))
    assert folder.num_frames == mp4.num_frames == 20
    indices = [3, 0, 19]
    np.testing.assert_allclose(frame_levels(folder.read(indices)), [26, 20, 58], atol=0.9)
    np.testing.assert_allclose(frame_levels(mp4.read(indices)), [26, 20, 58], atol=5)


def test_missing_and_corrupt_videos_raise_one_line_errors_naming_the_file(tmp_path):
    with pytest.raises(FileNotFoundError) as missing:
        VideoReader(str(tmp_path / 'nope.mp4'))
    corrupt = tmp_path / 'broken.mp4'
    corrupt.write_bytes(b'not a video' * 100)
    with pytest.raises(IOError) as broken:
        VideoReader(str(corrupt))
    for err, name in ((missing, 'nope.mp4'), (broken, 'broken.mp4')):
        assert name in str(err.value) and '\n' not in str(err.value)
