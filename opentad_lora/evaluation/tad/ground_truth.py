"""Ground truth of one subset, cleaned as OpenTAD's (and ActionFormer's) evaluation cleans it.

Real THUMOS-14 files repeat some instances and hold some of zero length. Before matching, an instance is dropped
when its end is not after its start, or when an instance already kept in the same video has the same label and
both boundaries within ``tol`` seconds. Every remaining label is a class of the evaluation, whether or not it is in
the model's class map (so ``Ambiguous`` instances in the subset form a class that the model never predicts).
"""
from typing import Iterable, List, NamedTuple, Optional, Sequence

from opentad_lora.datasets.tad.annotations import read_database

DUPLICATE_TOLERANCE = 1e-3  # seconds


class GroundTruthInstance(NamedTuple):
    """One evaluated ground-truth action."""

    video: str
    start: float
    end: float
    label: str


def clean_instances(annotations: Iterable[dict], tol: float = DUPLICATE_TOLERANCE) -> List[dict]:
    """The annotations of one video without non-positive-length instances and near-duplicates, in file order."""
    kept: List[dict] = []
    for ann in annotations:
        start, end = ann['segment'][0], ann['segment'][1]
        if end - start <= 0:
            continue
        if not any(ann['label'] == other['label'] and abs(start - other['segment'][0]) <= tol
                   and abs(end - other['segment'][1]) <= tol for other in kept):
            kept.append(ann)
    return kept


def load_ground_truth(ann_file: str, subset: str, blocked_videos: Optional[Sequence[str]] = None,
                      tol: float = DUPLICATE_TOLERANCE) -> List[GroundTruthInstance]:
    """Cleaned instances of the videos whose ``subset`` is ``subset``, in file order.

    Raises:
        FileNotFoundError, ValueError: naming the file (and video) that is missing or malformed.
    """
    blocked = set(blocked_videos or ())
    instances = []
    for video, info in read_database(ann_file).items():
        if info.get('subset') != subset or video in blocked:
            continue
        try:
            for ann in clean_instances(info.get('annotations', []), tol):
                instances.append(GroundTruthInstance(video, float(ann['segment'][0]), float(ann['segment'][1]),
                                                     str(ann['label'])))
        except (KeyError, IndexError, TypeError, ValueError) as err:
            raise ValueError(f'{ann_file}: video {video} has an annotation without a numeric "segment" [start, end] '
                             f'and a "label" ({type(err).__name__}: {err})') from None
    return instances
