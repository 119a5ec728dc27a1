"""The PyAV reader returns the OpenCV reader's frames bit for bit (seeking included), and the backend choice."""
import cv2
import numpy as np
import pytest

from opentad_lora.datasets.tad import pyav_decoder
from opentad_lora.datasets.tad.video_reader import VideoReader, resolve_backend

av = pytest.importorskip('av')
NUM_FRAMES, HEIGHT, WIDTH = 45, 36, 64


def textured_frames() -> np.ndarray:
    """Colour gradients, mild noise and a moving saturated square: chroma and motion make every frame count."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:HEIGHT, :WIDTH]
    image = np.stack([4 * x, 7 * y, 255 - 2 * x - 3 * y], axis=-1) + rng.integers(-12, 13, (HEIGHT, WIDTH, 3))
    frames = np.repeat(np.clip(image, 0, 255).astype(np.uint8)[None], NUM_FRAMES, axis=0)
    for t, frame in enumerate(frames):
        frame[8:24, t:t + 16] = (220, 40, 90)
    return frames


@pytest.fixture(scope='module')
def videos(tmp_path_factory) -> dict:
    """The same frames as mp4v (OpenCV's writer, as make_synthetic_thumos.py) and H.264 (keyframe every 8)."""
    root, frames = tmp_path_factory.mktemp('codecs'), textured_frames()
    mp4v = root / 'mp4v.mp4'
    writer = cv2.VideoWriter(str(mp4v), cv2.VideoWriter_fourcc(*'mp4v'), 30, (WIDTH, HEIGHT))
    for frame in frames:
        writer.write(frame[..., ::-1])
    writer.release()
    h264 = root / 'h264.mp4'
    with av.open(str(h264), 'w') as container:
        stream = container.add_stream('libx264', rate=30, options=dict(g='8', bf='2'))
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, 'yuv420p'
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')))
        container.mux(stream.encode())
    return dict(mp4v=mp4v, h264=h264)


@pytest.mark.parametrize('codec', ['mp4v', 'h264'])
def test_pyav_frames_equal_opencv_frames(videos, codec):
    path = str(videos[codec])
    opencv, pyav = VideoReader(path, backend='opencv'), VideoReader(path, backend='pyav')
    assert pyav.num_frames == opencv.num_frames == NUM_FRAMES and pyav.fps == opencv.fps == 30
    reference = opencv.read(range(NUM_FRAMES))  # every frame, decoded in order by OpenCV
    assert np.abs(reference.astype(int) - textured_frames()).mean() < 8  # a lossy copy of what was written
    windows = [range(NUM_FRAMES), range(0, 4), range(21, 39), range(30, 45, 3), [44, 60], [27, 3, 27, 11]]
    for window in windows:  # from the start, mid-GOP seeks (past keyframes 16, 24, ...), past the end, any order
        indices = np.minimum(np.asarray(list(window)), NUM_FRAMES - 1)
        frames = pyav.read(list(window))
        np.testing.assert_array_equal(frames, reference[indices])
        np.testing.assert_array_equal(frames, opencv.read(list(window)))


def test_decoder_threads_do_not_change_frames(videos):
    path = str(videos['h264'])
    single = VideoReader(path, backend='pyav', decoder_threads=1).read(range(10, 30))
    np.testing.assert_array_equal(VideoReader(path, backend='pyav', decoder_threads=2).read(range(10, 30)), single)


def test_backend_choice_and_missing_pyav(monkeypatch, videos):
    assert resolve_backend('auto') == 'pyav' and VideoReader(str(videos['mp4v'])).backend == 'pyav'
    with pytest.raises(ValueError, match="'ffmpeg'"):
        resolve_backend('ffmpeg')
    monkeypatch.setattr(pyav_decoder, 'av', None)
    assert resolve_backend('auto') == 'opencv'  # the fallback reader
    with pytest.raises(ImportError, match='pip install av'):
        VideoReader(str(videos['mp4v']), backend='pyav')


def test_pyav_errors_name_the_file(tmp_path):
    corrupt = tmp_path / 'broken.mp4'
    corrupt.write_bytes(b'not a video' * 100)
    with pytest.raises(IOError, match='broken.mp4') as err:
        VideoReader(str(corrupt), backend='pyav')
    assert '\n' not in str(err.value)
