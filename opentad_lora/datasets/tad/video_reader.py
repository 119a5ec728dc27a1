"""Read selected frames of a video file (mp4 or any container FFmpeg reads) or of a folder of pre-extracted frames
(``img_00001.jpg``, ...). Frames come back as RGB uint8 ``(N, H, W, 3)``.

Video files are decoded by PyAV when it is installed (``backend='auto'``: as fast as OpenCV or faster in
``benchmarks/video_decode.py``, and its FFmpeg threads can be set) and by OpenCV otherwise; both give the same
frames bit for bit (``pyav_decoder``).
"""
import os
import os.path as osp
from typing import Optional, Sequence

import cv2
import numpy as np

from . import pyav_decoder

BACKENDS = ('auto', 'pyav', 'opencv')


def resolve_backend(backend: str) -> str:
    """``'pyav'`` or ``'opencv'``: ``'auto'`` picks PyAV when the ``av`` package imports, else OpenCV."""
    if backend not in BACKENDS:
        raise ValueError(f'video reader backend must be one of {BACKENDS}, got {backend!r}')
    if backend == 'auto':
        return 'pyav' if pyav_decoder.pyav_available() else 'opencv'
    if backend == 'pyav' and not pyav_decoder.pyav_available():
        raise ImportError("video reader backend='pyav' needs PyAV: pip install av (requirements/video.txt), "
                          "or use backend='opencv'")
    return backend


class VideoReader:
    """Random access to the frames of one video.

    Args:
        path: Video file, or a directory of frames.
        filename_tmpl: Frame file name template inside a directory (OpenTAD/mmaction: ``img_{:05d}.jpg``).
        start_index: Index of the first frame file (1 for ``img_00001.jpg``).
        backend: Video file decoder: ``'auto'`` (PyAV if installed, else OpenCV), ``'pyav'`` or ``'opencv'``.
        decoder_threads: PyAV's FFmpeg threads per video (0: FFmpeg picks by CPU count, like OpenCV does).

    Raises:
        FileNotFoundError: The video or frame folder does not exist.
        IOError: The decoder cannot open or decode it (one line naming the file).
    """

    def __init__(self, path: str, filename_tmpl: str = 'img_{:05d}.jpg', start_index: int = 1,
                 backend: str = 'auto', decoder_threads: int = 0) -> None:
        self.path = path
        self.filename_tmpl = filename_tmpl
        self.start_index = start_index
        self.backend = resolve_backend(backend)
        self.decoder_threads = decoder_threads
        self.is_folder = osp.isdir(path)
        self.fps: Optional[float] = None
        if self.is_folder:
            self._num_frames = len([f for f in os.listdir(path) if f.lower().endswith(('.jpg', '.jpeg', '.png'))])
            if self._num_frames == 0:
                raise IOError(f'frame folder has no images: {path}')
        elif not osp.isfile(path):
            raise FileNotFoundError(f'video not found: {path}')
        elif self.backend == 'pyav':
            self._num_frames, self.fps = pyav_decoder.probe(path)
        else:
            cap = cv2.VideoCapture(path)
            ok = cap.isOpened()
            self._num_frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if ok else 0
            self.fps = float(cap.get(cv2.CAP_PROP_FPS)) if ok else None
            cap.release()
            if not ok or self._num_frames <= 0:
                raise IOError(f'cannot open video (corrupt or unsupported): {path}')

    @property
    def num_frames(self) -> int:
        """Frame count reported by the container (or files in the folder)."""
        return self._num_frames

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """Frames at ``indices`` (any order, repeats allowed), each clipped to the last frame, as RGB uint8."""
        indices = np.clip(np.asarray(indices, dtype=np.int64), 0, self._num_frames - 1)
        if len(indices) == 0:
            raise ValueError(f'no frame indices requested from {self.path}')
        wanted = np.unique(indices)
        if self.is_folder:
            frames = np.stack(self._read_folder(wanted))
        elif self.backend == 'pyav':
            frames = pyav_decoder.decode(self.path, wanted, self.decoder_threads)
        else:
            frames = np.stack(self._read_video(wanted))
        if len(indices) == len(wanted) and (indices == wanted).all():
            return frames  # a window in order (the usual read): no second copy
        return frames[np.searchsorted(wanted, indices)]

    def _read_folder(self, wanted: np.ndarray) -> list:
        frames = []
        for index in wanted:
            file = osp.join(self.path, self.filename_tmpl.format(int(index) + self.start_index))
            image = cv2.imread(file, cv2.IMREAD_COLOR)
            if image is None:
                raise IOError(f'cannot read frame {file}')
            frames.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        return frames

    def _read_video(self, wanted: np.ndarray) -> list:
        """OpenCV: seek once to the first wanted frame, then decode forward (skipping frames that are not wanted)."""
        cap = cv2.VideoCapture(self.path)
        if not cap.isOpened():
            raise IOError(f'cannot open video (corrupt or unsupported): {self.path}')
        frames, last = [], None
        try:
            position = int(wanted[0])
            cap.set(cv2.CAP_PROP_POS_FRAMES, position)
            for index in wanted:
                while position < index:
                    cap.grab()
                    position += 1
                ok, frame = cap.read()
                position += 1
                if ok:
                    last = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                elif last is None:
                    raise IOError(f'cannot decode frame {int(index)} of video {self.path}')
                frames.append(last)  # a container that over-reports its length repeats the last decoded frame
        finally:
            cap.release()
        return frames
