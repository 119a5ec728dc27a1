"""Decode selected frames of a video file with PyAV (FFmpeg's libraries, bundled in the ``av`` wheel).

Why PyAV: it seeks to the keyframe before the first wanted frame, decodes forward without converting the frames
it skips, and converts each wanted frame straight to RGB into the output array, with one swscale context for the
whole read (OpenCV converts to BGR, then swaps to RGB; ``VideoFrame.to_ndarray`` sets a context up per frame).
Its ``rgb24`` conversion is FFmpeg's swscale with the same defaults OpenCV uses (BT.601 matrix, limited range),
so frames are bit-identical to :class:`~opentad_lora.datasets.tad.video_reader.VideoReader`'s OpenCV path
(``tests/test_datasets/test_tad/test_video_reader_backends.py`` checks this per codec).
"""
from fractions import Fraction
from typing import Optional, Tuple

import numpy as np

try:
    import av
    from av.video.reformatter import VideoReformatter
except ImportError:  # the OpenCV reader is the fallback
    av = None


def pyav_available() -> bool:
    return av is not None


def _open(path: str):
    try:
        container = av.open(path)
    except (av.error.FFmpegError, UnicodeDecodeError) as err:
        raise IOError(f'cannot open video (corrupt or unsupported): {path} ({type(err).__name__})') from None
    if not container.streams.video:
        container.close()
        raise IOError(f'cannot open video (no video stream): {path}')
    return container


def _frame_rate(stream) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return Fraction(rate) if rate else Fraction(0)


def probe(path: str) -> Tuple[int, float]:
    """``(num_frames, fps)`` from the container header, as OpenCV reports them: the stream's frame count, else
    duration x frame rate rounded. Raises IOError when the file has no decodable video stream."""
    container = _open(path)
    try:
        stream = container.streams.video[0]
        rate = _frame_rate(stream)
        num_frames = stream.frames
        if not num_frames and rate:
            if stream.duration is not None:
                seconds = stream.duration * stream.time_base
            else:
                seconds = Fraction(container.duration or 0, av.time_base)
            num_frames = int(seconds * rate + Fraction(1, 2))
    finally:
        container.close()
    if num_frames <= 0 or not rate:
        raise IOError(f'cannot open video (corrupt or unsupported): {path}')
    return int(num_frames), float(rate)


def decode(path: str, wanted: np.ndarray, threads: int = 0) -> np.ndarray:
    """RGB uint8 frames ``(len(wanted), H, W, 3)`` at the sorted, unique indices ``wanted``.

    A frame's index is its presentation time x frame rate (what OpenCV's seek uses). Wanted indices past the last
    decodable frame repeat it (a container may over-report its length).

    Args:
        path: Video file.
        wanted: Sorted unique frame indices.
        threads: FFmpeg decoding threads (0: FFmpeg picks, by CPU count; 1: none).
    """
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = 'AUTO' if threads != 1 else 'SLICE'
        stream.codec_context.thread_count = threads
        rate, time_base = _frame_rate(stream), stream.time_base
        origin = stream.start_time or 0

        def index_of(pts: int) -> int:
            return round((pts - origin) * time_base * rate)

        first = int(wanted[0])
        decoded = None
        if first > 0 and rate and time_base:
            container.seek(origin + int(first / (rate * time_base)), stream=stream, backward=True)
            decoded = _decode_forward(path, container, stream, wanted, index_of, after_seek=True)
        if decoded is None:  # from the start: a seek that overshot (bad index) or frames without time stamps
            container.seek(origin, stream=stream, backward=True)
            decoded = _decode_forward(path, container, stream, wanted, index_of, after_seek=False)
    except av.error.FFmpegError as err:
        raise IOError(f'cannot decode video {path}: {err}') from None
    finally:
        container.close()
    frames, count = decoded
    if frames is None:
        raise IOError(f'cannot decode frame {int(wanted[0])} of video {path}')
    frames[count:] = frames[count - 1]
    return frames


def _decode_forward(path: str, container, stream, wanted: np.ndarray, index_of,
                    after_seek: bool) -> Optional[Tuple[Optional[np.ndarray], int]]:
    """``(frames, how many were decoded)`` for ``wanted`` from the current position; None when a position cannot be
    trusted after a seek. From the stream start, frames without a time stamp are numbered in decoding order."""
    frames, target, to_rgb = None, 0, VideoReformatter()
    for number, frame in enumerate(container.decode(stream)):
        if frame.pts is None:
            if after_seek:
                return None
            position = number
        else:
            position = index_of(frame.pts)
        if number == 0 and after_seek and position > wanted[0]:
            return None
        if position < wanted[target]:
            continue  # skipped frames are decoded (the codec needs them) but never converted
        image = to_rgb.reformat(frame, format='rgb24').to_ndarray()
        if frames is None:
            frames = np.empty((len(wanted), ) + image.shape, np.uint8)
        elif image.shape != frames.shape[1:]:
            raise IOError(f'frame size changes from {frames.shape[1:3]} to {image.shape[:2]} in video {path}')
        while target < len(wanted) and wanted[target] <= position:  # a gap in time stamps: the next frame
            frames[target] = image
            target += 1
        if target == len(wanted):
            break
    return frames, target
