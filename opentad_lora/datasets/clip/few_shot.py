"""K-shot subsets (CLIP-LoRA's 1-16 shots per class) and the few-shot image-folder dataset."""
from typing import List, Optional, Sequence

import numpy as np

from opentad_lora.registry import DATASETS
from ..classification import ImageFolderDataset


def few_shot_indices(labels: Sequence[int], shots: int, seed: int = 0) -> List[int]:
    """Indices of ``shots`` random samples of every class (all of a class that has fewer), sorted.

    Reproducible for a given ``seed``; classes are drawn independently so adding a class leaves the others' draws
    unchanged.
    """
    if shots < 1:
        raise ValueError(f'shots must be >= 1, got {shots}.')
    labels = np.asarray(labels)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng = np.random.default_rng([seed, int(label)])
        chosen.extend(rng.choice(members, size=min(shots, len(members)), replace=False).tolist())
    return sorted(chosen)


def apply_few_shot(data_list: List[dict], shots: Optional[int], seed: int) -> List[dict]:
    """``data_list`` restricted to :func:`few_shot_indices` of its ``gt_label``s (unchanged when ``shots`` is None)."""
    if shots is None:
        return data_list
    return [data_list[i] for i in few_shot_indices([d['gt_label'] for d in data_list], shots, seed)]


@DATASETS.register_module()
class FewShotImageFolder(ImageFolderDataset):
    """:class:`ImageFolderDataset` (``root/<class>/<image>``) keeping ``num_shots`` images per class.

    Args:
        num_shots: Images per class (None = all).
        shot_seed: Seed of the draw.
        **kwargs: Of :class:`ImageFolderDataset`.
    """

    def __init__(self, *args, num_shots: Optional[int] = None, shot_seed: int = 0, **kwargs) -> None:
        self.num_shots, self.shot_seed = num_shots, shot_seed
        super().__init__(*args, **kwargs)

    def load_data_list(self) -> List[dict]:
        return apply_few_shot(super().load_data_list(), self.num_shots, self.shot_seed)
