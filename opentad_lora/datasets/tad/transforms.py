"""Pipeline steps of end-to-end TAD: pick a window of frames, decode it, resize/crop/flip, pack as NCTHW.

Each step is a callable on the ``results`` dict. Coordinates: ``gt_segments`` are in snippets (sampled frames)
counted from ``window_start`` (a snippet index); ``imgs`` is ``(T, H, W, 3)`` RGB uint8 until packing.
"""
import os.path as osp
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from mmengine.structures import BaseDataElement

from opentad_lora.registry import TRANSFORMS

from .video_reader import VideoReader

META_KEYS = ('video_name', 'fps', 'duration', 'sample_stride', 'window_size', 'window_start_frame', 'valid_len',
             'img_shape', 'flip')


def truncate_gt(segments: np.ndarray, labels: np.ndarray, start: float, end: float,
                thresh: float) -> Tuple[np.ndarray, np.ndarray]:
    """Clip actions to ``[start, end)`` and keep those with at least ``thresh`` of their length inside.

    Returns the kept segments shifted to start at 0, and their labels.
    """
    left, right = np.maximum(segments[:, 0], start), np.minimum(segments[:, 1], end)
    inside = np.clip(right - left, 0, None) / np.maximum(segments[:, 1] - segments[:, 0], 1e-6)
    keep = (inside >= thresh) & (right > left)
    return np.stack([left[keep], right[keep]], axis=1).reshape(-1, 2) - start, labels[keep]


@TRANSFORMS.register_module()
class PrepareVideoInfo:
    """Set ``filename`` to ``data_path/<prefix><video_name>.<format>``; ``format=''`` means a frame folder."""

    def __init__(self, format: str = 'mp4', prefix: str = '') -> None:
        self.format = format
        self.prefix = prefix

    def __call__(self, results: dict) -> dict:
        name = self.prefix + results['video_name'] + (f'.{self.format}' if self.format else '')
        results['filename'] = osp.join(results['data_path'], name)
        return results


@TRANSFORMS.register_module()
class LoadFrames:
    """Choose the snippets of a window, decode their frames and pad a short window by repeating the last frame.

    Methods: ``'sliding_window'`` uses the ``window_start`` set by the dataset; ``'random_trunc'`` (training)
    draws a window of ``trunc_len`` snippets holding at least one action with ``trunc_thresh`` of it inside, as
    OpenTAD does (a video no longer than the window is used whole, or cut to a random ``crop_ratio`` of its
    length). ``valid_len`` counts the real (unpadded) snippets.

    Args:
        method: ``'sliding_window'`` or ``'random_trunc'``.
        trunc_len: Window length in snippets for ``'random_trunc'`` (default: the dataset's ``window_size``).
        trunc_thresh: Fraction of an action that must fall inside a random window to keep it.
        crop_ratio: ``[low, high]`` random length ratio for videos not longer than the window.
        max_trials: Attempts to find a window with an action.
        filename_tmpl: Frame file template for frame folders.
        start_index: First frame file index for frame folders.
        backend: Video decoder: ``'auto'`` (PyAV when installed, else OpenCV), ``'pyav'`` or ``'opencv'``.
        decoder_threads: PyAV's FFmpeg threads per video (0: FFmpeg picks; 1 suits many DataLoader workers).
    """

    def __init__(self, method: str = 'sliding_window', trunc_len: Optional[int] = None, trunc_thresh: float = 0.5,
                 crop_ratio: Optional[Sequence[float]] = None, max_trials: int = 200,
                 filename_tmpl: str = 'img_{:05d}.jpg', start_index: int = 1, backend: str = 'auto',
                 decoder_threads: int = 0) -> None:
        if method not in ('sliding_window', 'random_trunc'):
            raise ValueError(f'LoadFrames: method must be "sliding_window" or "random_trunc", got {method!r}')
        self.method = method
        self.trunc_len = trunc_len
        self.trunc_thresh = trunc_thresh
        self.crop_ratio = crop_ratio
        self.max_trials = max_trials
        self.filename_tmpl = filename_tmpl
        self.start_index = start_index
        self.backend, self.decoder_threads = backend, decoder_threads

    def _random_window(self, results: dict, num_snippets: int, window: int) -> Tuple[int, int]:
        """``(start, length)`` of a random window; updates the ground truth in ``results``."""
        length = min(window, num_snippets)
        if num_snippets <= window and self.crop_ratio is not None:
            low = max(round(self.crop_ratio[0] * num_snippets), 1)
            high = max(low, min(round(self.crop_ratio[1] * num_snippets), num_snippets))
            length = int(np.random.randint(low, high + 1))
        segments, labels = results['gt_segments'], results['gt_labels']
        for _ in range(self.max_trials):
            start = int(np.random.randint(0, num_snippets - length + 1))
            kept_segments, kept_labels = truncate_gt(segments, labels, start, start + length, self.trunc_thresh)
            if len(kept_labels) > 0 or len(labels) == 0:
                break
        results['gt_segments'], results['gt_labels'] = kept_segments, kept_labels
        return start, length

    def __call__(self, results: dict) -> dict:
        reader = VideoReader(results['filename'], self.filename_tmpl, self.start_index, backend=self.backend,
                             decoder_threads=self.decoder_threads)
        stride = results['sample_stride']
        num_frames = results.get('total_frames') or reader.num_frames
        num_snippets = max(1, -(-num_frames // stride))
        window = self.trunc_len or results['window_size']
        if self.method == 'random_trunc':
            start, length = self._random_window(results, num_snippets, window)
        else:
            start = results['window_start']
            length = max(1, min(window, num_snippets - start))
        snippets = np.arange(start, start + length)
        frame_indices = np.minimum(snippets * stride, num_frames - 1)
        frame_indices = np.pad(frame_indices, (0, window - length), mode='edge')
        results['imgs'] = reader.read(frame_indices)
        results['window_start_frame'] = int(start * stride)
        results['window_size'] = window
        results['valid_len'] = int(length)
        return results


@TRANSFORMS.register_module()
class ResizeShortSide:
    """Resize every frame so its shorter side is ``short_side`` pixels, keeping the aspect ratio."""

    def __init__(self, short_side: int) -> None:
        self.short_side = short_side

    def __call__(self, results: dict) -> dict:
        height, width = results['imgs'].shape[1:3]
        scale = self.short_side / min(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        results['imgs'] = resize_frames(results['imgs'], size)
        return results


@TRANSFORMS.register_module()
class Resize:
    """Resize every frame to ``scale = (width, height)`` (or a square side), ignoring the aspect ratio."""

    def __init__(self, scale) -> None:
        self.size = (scale, scale) if isinstance(scale, int) else tuple(scale)

    def __call__(self, results: dict) -> dict:
        results['imgs'] = resize_frames(results['imgs'], self.size)
        return results


def resize_frames(frames: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """``(T, H, W, 3)`` frames resized to ``size = (width, height)`` (area filter when shrinking), each straight into
    one output array (no list of frames to stack: one pass less over the window)."""
    if frames.shape[2] == size[0] and frames.shape[1] == size[1]:
        return frames
    shrink = size[0] < frames.shape[2]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    out = np.empty((len(frames), size[1], size[0], frames.shape[3]), frames.dtype)
    for frame, dst in zip(frames, out):
        cv2.resize(frame, size, dst=dst, interpolation=interp)
    return out


@TRANSFORMS.register_module()
class CenterCrop:
    """Crop the central ``crop_size`` square (or ``(width, height)``) of every frame."""

    def __init__(self, crop_size) -> None:
        self.size = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)

    def offsets(self, height: int, width: int) -> Tuple[int, int]:
        return (height - self.size[1]) // 2, (width - self.size[0]) // 2

    def __call__(self, results: dict) -> dict:
        height, width = results['imgs'].shape[1:3]
        if height < self.size[1] or width < self.size[0]:
            raise ValueError(f'{type(self).__name__}: frames of {results["video_name"]} are {width}x{height}, '
                             f'smaller than the crop {self.size[0]}x{self.size[1]}')
        top, left = self.offsets(height, width)
        results['imgs'] = results['imgs'][:, top:top + self.size[1], left:left + self.size[0]]
        return results


@TRANSFORMS.register_module()
class RandomCrop(CenterCrop):
    """Crop the same random ``crop_size`` region of every frame of the window."""

    def offsets(self, height: int, width: int) -> Tuple[int, int]:
        return (int(np.random.randint(0, height - self.size[1] + 1)),
                int(np.random.randint(0, width - self.size[0] + 1)))


@TRANSFORMS.register_module()
class RandomResizedCrop:
    """Crop one random region of random area and aspect ratio from every frame (mmaction's semantics: the crop is
    not resized; follow it with ``Resize``). Falls back to the whole frame after ``max_attempts`` misses.

    Args:
        area_range: Fraction of the frame area to keep.
        aspect_ratio_range: Width/height ratio range, sampled log-uniformly.
        max_attempts: Tries to fit a box inside the frame.
    """

    def __init__(self, area_range: Sequence[float] = (0.08, 1.0),
                 aspect_ratio_range: Sequence[float] = (3 / 4, 4 / 3), max_attempts: int = 10) -> None:
        self.area_range = area_range
        self.log_ratio = (np.log(aspect_ratio_range[0]), np.log(aspect_ratio_range[1]))
        self.max_attempts = max_attempts

    def __call__(self, results: dict) -> dict:
        height, width = results['imgs'].shape[1:3]
        for _ in range(self.max_attempts):
            area = np.random.uniform(*self.area_range) * height * width
            ratio = np.exp(np.random.uniform(*self.log_ratio))
            crop_w, crop_h = int(round(np.sqrt(area * ratio))), int(round(np.sqrt(area / ratio)))
            if 0 < crop_w <= width and 0 < crop_h <= height:
                top = int(np.random.randint(0, height - crop_h + 1))
                left = int(np.random.randint(0, width - crop_w + 1))
                results['imgs'] = results['imgs'][:, top:top + crop_h, left:left + crop_w]
                break
        return results


@TRANSFORMS.register_module()
class Flip:
    """Mirror all frames horizontally with probability ``flip_ratio`` (time and labels are unchanged).

    The mirrored frames are a new contiguous array made by ``cv2.flip`` on the frames stacked as one image (the same
    values as the view ``imgs[:, :, ::-1]``, which the next step would copy element by element, ~10x slower).
    """

    def __init__(self, flip_ratio: float = 0.5) -> None:
        self.flip_ratio = flip_ratio

    def __call__(self, results: dict) -> dict:
        results['flip'] = bool(np.random.rand() < self.flip_ratio)
        if results['flip']:
            imgs = np.ascontiguousarray(results['imgs'])
            results['imgs'] = cv2.flip(imgs.reshape(-1, *imgs.shape[2:]), 1).reshape(imgs.shape)
        return results


@TRANSFORMS.register_module()
class PackTADInputs:
    """Pack ``imgs`` as a ``(3, T, H, W)`` uint8 tensor (NCTHW once batched) and a data sample.

    The data sample holds ``gt_segments`` (float, snippets from the window start) and ``gt_labels`` when present,
    and the window's timing in its metainfo (``META_KEYS``).
    """

    def __init__(self, meta_keys: Sequence[str] = META_KEYS) -> None:
        self.meta_keys = tuple(meta_keys)

    def __call__(self, results: dict) -> dict:
        imgs = np.ascontiguousarray(results['imgs'].transpose(3, 0, 1, 2))
        results['img_shape'] = imgs.shape[2:]
        results.setdefault('flip', False)
        sample = BaseDataElement(metainfo={k: results[k] for k in self.meta_keys if k in results})
        if 'gt_segments' in results:
            sample.gt_segments = torch.as_tensor(np.asarray(results['gt_segments'], np.float32).reshape(-1, 2))
            sample.gt_labels = torch.as_tensor(np.asarray(results['gt_labels'], np.int64).reshape(-1))
        return dict(inputs=torch.from_numpy(imgs), data_samples=sample)
