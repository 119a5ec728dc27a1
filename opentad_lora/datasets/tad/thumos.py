"""THUMOS-14 (and any ActivityNet-style JSON) end-to-end datasets: one item per video or per sliding window."""
import os.path as osp
from typing import List, Optional, Sequence, Union

import numpy as np
from mmengine.dataset import BaseDataset

from opentad_lora.registry import DATASETS

from .annotations import VideoAnnotation, load_annotations, load_class_map
from .transforms import truncate_gt
from .video_reader import VideoReader


class TADVideoDataset(BaseDataset):
    """Videos of one subset of an OpenTAD annotation file, ground truth converted to snippets.

    Each data info holds ``video_name``, ``data_path``, ``total_frames``, ``fps``, ``duration``, ``sample_stride``,
    ``window_size``, ``window_start`` (snippet index) and, outside ``test_mode``, ``gt_segments`` (snippets from
    ``window_start``) and ``gt_labels``. Subclasses decide how videos become items (:meth:`split_video`).

    Args:
        ann_file: Annotation JSON.
        subset_name: Subset(s) to use, e.g. ``'training'``.
        data_path: Folder of the videos (or frame folders).
        class_map: Class map file (``category_idx.txt``).
        pipeline: Transforms, e.g. ``PrepareVideoInfo -> LoadFrames -> ... -> PackTADInputs``.
        window_size: Snippets per window.
        sample_stride: Frames between two snippets.
        test_mode: Keep every video/window and no ground truth (the metric reads the annotation file).
        block_list: Video names to leave out.
        frame_count_from: ``'json'`` (the ``frame`` key, else the video) or ``'video'`` (open each video).
        **kwargs: Passed to ``mmengine.dataset.BaseDataset`` (``lazy_init``, ``serialize_data``, ``indices``).
    """

    def __init__(self, ann_file: str, subset_name: Union[str, Sequence[str]], data_path: str, class_map: str,
                 pipeline: Sequence[dict], window_size: int, sample_stride: int = 1, test_mode: bool = False,
                 block_list: Optional[Sequence[str]] = None, frame_count_from: str = 'json', **kwargs) -> None:
        self.subset_name = subset_name
        self.data_path = data_path
        self.class_names = load_class_map(class_map)
        self.window_size = int(window_size)
        self.sample_stride = int(sample_stride)
        self.block_list = set(block_list or [])
        self.frame_count_from = frame_count_from
        super().__init__(ann_file=ann_file, metainfo=dict(classes=tuple(self.class_names)), pipeline=pipeline,
                         test_mode=test_mode, **kwargs)

    def _timing(self, video: VideoAnnotation) -> tuple:
        """``(total_frames, fps)`` from the JSON, falling back to the video file."""
        if self.frame_count_from == 'json' and video.num_frames and video.fps:
            return video.num_frames, video.fps
        reader = VideoReader(self._video_path(video.video_name))
        num_frames = video.num_frames if self.frame_count_from == 'json' and video.num_frames else reader.num_frames
        fps = video.fps or num_frames / video.duration
        return num_frames, fps

    def _video_path(self, video_name: str) -> str:
        """Default location used when the JSON lacks timing: ``<data_path>/<name>.mp4`` or a frame folder."""
        path = osp.join(self.data_path, video_name + '.mp4')
        return path if osp.exists(path) else osp.join(self.data_path, video_name)

    def load_data_list(self) -> List[dict]:
        data_list = []
        for video in load_annotations(self.ann_file, self.class_names, self.subset_name):
            if video.video_name in self.block_list:
                continue
            total_frames, fps = self._timing(video)
            info = dict(video_name=video.video_name, data_path=self.data_path, total_frames=int(total_frames),
                        fps=float(fps), duration=video.duration, sample_stride=self.sample_stride,
                        window_size=self.window_size)
            segments = video.segments * fps / self.sample_stride  # seconds -> snippets
            data_list.extend(self.split_video(info, segments, video.labels))
        if not data_list:
            raise ValueError(f'{type(self).__name__}: no usable video in subset {self.subset_name!r} of '
                             f'{self.ann_file}')
        return data_list

    def split_video(self, info: dict, segments: np.ndarray, labels: np.ndarray) -> List[dict]:
        raise NotImplementedError


@DATASETS.register_module()
class ThumosPaddingDataset(TADVideoDataset):
    """One item per video with actions (training): ``LoadFrames(method='random_trunc')`` picks the window.

    A video shorter than the window is padded by the pipeline (``valid_len`` marks the real part).
    """

    def split_video(self, info: dict, segments: np.ndarray, labels: np.ndarray) -> List[dict]:
        if self.test_mode:
            return [dict(info, window_start=0)]
        if len(labels) == 0:
            return []
        return [dict(info, window_start=0, gt_segments=segments, gt_labels=labels)]


@DATASETS.register_module()
class ThumosSlidingDataset(TADVideoDataset):
    """One item per sliding window of ``window_size`` snippets, overlapping by ``window_overlap_ratio``.

    The last window is aligned to the video end (OpenTAD's rule), so every snippet is covered; a video shorter than
    one window gives one padded window. Outside ``test_mode`` only windows holding at least one action with more
    than ``ioa_thresh`` of its length inside are kept, with the actions clipped to the window.

    Args:
        window_overlap_ratio: Overlap of consecutive windows (OpenTAD: 0.25 for validation, 0.5 for test).
        ioa_thresh: Fraction of an action inside a training window to keep it.
    """

    def __init__(self, *args, window_overlap_ratio: float = 0.25, ioa_thresh: float = 0.75, **kwargs) -> None:
        if not 0 <= window_overlap_ratio < 1:
            raise ValueError(f'window_overlap_ratio must be in [0, 1), got {window_overlap_ratio}')
        self.window_overlap_ratio = window_overlap_ratio
        self.ioa_thresh = ioa_thresh
        super().__init__(*args, **kwargs)

    def split_video(self, info: dict, segments: np.ndarray, labels: np.ndarray) -> List[dict]:
        num_snippets = -(-info['total_frames'] // self.sample_stride)
        stride = max(1, int(self.window_size * (1 - self.window_overlap_ratio)))
        starts = list(range(0, max(num_snippets - self.window_size, 0) + 1, stride))
        if starts[-1] + self.window_size < num_snippets:
            starts.append(num_snippets - self.window_size)
        items = []
        for start in starts:
            if self.test_mode:
                items.append(dict(info, window_start=start))
                continue
            window_segments, window_labels = truncate_gt(segments, labels, start, start + self.window_size,
                                                         self.ioa_thresh)
            if len(window_labels) > 0:
                items.append(dict(info, window_start=start, gt_segments=window_segments, gt_labels=window_labels))
        return items
