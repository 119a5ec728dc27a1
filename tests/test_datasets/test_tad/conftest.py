"""A tiny THUMOS-format dataset whose frame ``t`` is uniformly grey level ``20 + 2 t`` (so reads can be checked)."""
import json

import cv2
import numpy as np
import pytest

CLASSES = ['BaseballPitch', 'Billiards']
FPS = 10.0


def grey_frames(num_frames: int, width: int = 40, height: int = 32) -> np.ndarray:
    levels = 20 + 2 * np.arange(num_frames)
    return np.broadcast_to(levels[:, None, None, None], (num_frames, height, width, 3)).astype(np.uint8).copy()


def write_mp4(path, frames: np.ndarray) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), FPS, (frames.shape[2], frames.shape[1]))
    for frame in frames:
        writer.write(frame)
    writer.release()


@pytest.fixture(scope='package')
def thumos_dir(tmp_path_factory):
    """``video_validation_1`` (70 frames, training) and ``video_test_1`` (20 frames, validation) + frame folder."""
    root = tmp_path_factory.mktemp('tad_data')
    videos = root / 'video'
    videos.mkdir()
    lengths = {'video_validation_1': 70, 'video_test_1': 20}
    for name, length in lengths.items():
        write_mp4(videos / f'{name}.mp4', grey_frames(length))
    frames_dir = root / 'frames' / 'video_test_1'
    frames_dir.mkdir(parents=True)
    for index, frame in enumerate(grey_frames(20), start=1):
        cv2.imwrite(str(frames_dir / f'img_{index:05d}.jpg'), frame)
    database = {
        'video_validation_1': dict(subset='training', duration=7.0, frame=70, annotations=[
            dict(segment=[0.5, 2.0], label='Billiards'), dict(segment=[3.0, 3.5], label='Ambiguous'),
            dict(segment=[4.0, 6.5], label='BaseballPitch')]),
        'video_test_1': dict(subset='validation', duration=2.0, frame=20, annotations=[
            dict(segment=[0.2, 1.2], label='BaseballPitch')]),
    }
    (root / 'anno.json').write_text(json.dumps(dict(database=database)))
    (root / 'category_idx.txt').write_text('\n'.join(CLASSES) + '\n')
    return root


def decode_all(path) -> np.ndarray:
    """Every frame of a video decoded in order by OpenCV (RGB), the reference for random access reads."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    ok, frame = cap.read()
    while ok:
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        ok, frame = cap.read()
    cap.release()
    return np.stack(frames)


@pytest.fixture(scope='package')
def decoded(thumos_dir):
    """``{video name: all frames}`` decoded sequentially."""
    return {path.stem: decode_all(path) for path in (thumos_dir / 'video').glob('*.mp4')}
