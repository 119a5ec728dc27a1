"""Read ActivityNet/THUMOS-style annotation files as OpenTAD writes them.

The annotation JSON is ``{"database": {video_id: {"subset", "duration", "frame" (optional), "fps" (optional),
"annotations": [{"segment": [start_s, end_s], "label": name}, ...]}}}``; the class map is a text file with one
class name per line, whose line number is the class index.

Training targets are cleaned as OpenTAD's THUMOS datasets do: ``Ambiguous`` instances are skipped and an instance
repeating an earlier one (same label, same start and end) is dropped; zero-length instances stay (OpenTAD's
``filter_gt=False``). The evaluation cleans the ground truth by its own rules (``opentad_lora.evaluation.tad``).
"""
import json
import os.path as osp
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

IGNORED_LABELS = ('Ambiguous', )  # THUMOS-14 marks unclear instances so; OpenTAD skips them


@dataclass
class VideoAnnotation:
    """Ground truth and timing of one video.

    Attributes:
        video_name: Video id (file stem of the video or frame folder).
        subset: Subset name in the JSON (OpenTAD: ``training`` / ``validation``).
        duration: Length in seconds.
        num_frames: Frame count (``frame`` key), or None when the JSON has none.
        fps: Frames per second: ``fps`` key, else ``frame / duration``, else None.
        segments: ``(K, 2)`` float array of [start, end] in seconds.
        labels: ``(K,)`` int array of class indices into the class map.
    """

    video_name: str
    subset: str
    duration: float
    num_frames: Optional[int]
    fps: Optional[float]
    segments: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0, ), np.int64))


def load_class_map(path: str) -> List[str]:
    """Class names, one per non-empty line of ``path`` (e.g. ``category_idx.txt``)."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'class map file not found: {path}')
    with open(path, encoding='utf-8') as f:
        names = [line.strip() for line in f if line.strip()]
    if len(set(names)) != len(names):
        raise ValueError(f'class map {path} lists a class twice')
    return names


def read_database(ann_file: str) -> Dict[str, dict]:
    """The ``database`` mapping of an annotation JSON, videos in file order.

    Raises:
        FileNotFoundError, ValueError: naming the file that is missing or malformed.
    """
    if not osp.isfile(ann_file):
        raise FileNotFoundError(f'annotation file not found: {ann_file}')
    try:
        with open(ann_file, encoding='utf-8') as f:
            database = json.load(f)['database']
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f'{ann_file} is not an annotation JSON with a "database" key ({err})') from None
    if not isinstance(database, dict):
        raise ValueError(f'{ann_file}: "database" must map video ids to videos, got {type(database).__name__}')
    return database


def load_annotations(ann_file: str, class_names: Sequence[str],
                     subset: Optional[Union[str, Sequence[str]]] = None) -> List[VideoAnnotation]:
    """Videos of ``subset`` (all when None) with their training targets (see the module docstring).

    Raises:
        FileNotFoundError, ValueError: naming the file (and video / label) that is missing or malformed.
    """
    database = read_database(ann_file)
    subsets = None if subset is None else ({subset} if isinstance(subset, str) else set(subset))
    index = {name: i for i, name in enumerate(class_names)}
    videos = []
    for video_name, info in database.items():
        if subsets is not None and info.get('subset') not in subsets:
            continue
        try:
            duration = float(info['duration'])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f'{ann_file}: video {video_name} has no valid "duration"') from None
        num_frames = int(info['frame']) if info.get('frame') is not None else None
        fps = float(info['fps']) if info.get('fps') else (num_frames / duration if num_frames and duration else None)
        segments, labels = [], []
        for ann in info.get('annotations', []):
            if ann['label'] in IGNORED_LABELS:
                continue
            if ann['label'] not in index:
                raise ValueError(f'{ann_file}: video {video_name} has label {ann["label"]!r} that is not in the '
                                 f'class map ({len(class_names)} classes)')
            start, end = (float(v) for v in ann['segment'])
            if ((start, end), index[ann['label']]) in zip(segments, labels):  # a repeated instance
                continue
            segments.append((start, end))
            labels.append(index[ann['label']])
        videos.append(VideoAnnotation(
            video_name=video_name, subset=str(info.get('subset')), duration=duration, num_frames=num_frames,
            fps=fps, segments=np.asarray(segments, dtype=np.float32).reshape(-1, 2),
            labels=np.asarray(labels, dtype=np.int64)))
    return videos
