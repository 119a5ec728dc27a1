"""Pipeline steps of CAD-Recode samples: load and fit the point cloud, augment it, load and tokenise the program."""
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from mmcv.transforms import BaseTransform
from mmengine.structures import BaseDataElement

from opentad_lora.registry import TRANSFORMS
from .geometry import farthest_point_sampling, fit_to_cube
from .io import read_points
from opentad_lora.models.cad.tokenization import CADCodeTokenizer


# The point preprocessing of each CAD-Recode release (CHANGELOG v1.5: normals removed, random sampling -> furthest
# point sampling, points sorted by z -> unsorted). A checkpoint's point encoder tells which one it was trained with.
POINT_RECIPES = {
    'v1': dict(normals=True, sampling='random', sort_by_z=True),
    'v1.5': dict(normals=False, sampling='furthest', sort_by_z=False),
}


@TRANSFORMS.register_module()
class LoadCADPointCloud(BaseTransform):
    """Read ``points_path`` (``.npy``/``.ply``), fit it to ``[-1, 1]`` and keep ``num_points`` of its points as
    CAD-Recode ``recipe`` did.

    ``'v1.5'``: xyz only, furthest point sampling from the first point, in sampling order. ``'v1'``: xyz + unit
    normals (the file must have them), points drawn uniformly at random without replacement (``np.random``, seeded
    per worker by the Runner), then sorted by z, then y, then x. Clouds with fewer points are repeated cyclically up
    to ``num_points``. Adds ``points`` ``(num_points, 3)`` (``(num_points, 6)`` for v1) float32.

    Args:
        num_points: Points per cloud (CAD-Recode: 256).
        recipe: ``'v1.5'`` or ``'v1'``; the model's ``point_recipe`` says which one its checkpoint needs.
        normalize: Fit the cloud to ``[-1, 1]`` (bounding-box centre, largest extent).
    """

    def __init__(self, num_points: int = 256, recipe: str = 'v1.5', normalize: bool = True) -> None:
        if recipe not in POINT_RECIPES:
            raise ValueError(f'Unknown CAD-Recode point recipe {recipe!r}; choose from {sorted(POINT_RECIPES)}.')
        self.num_points, self.recipe, self.normalize = num_points, recipe, normalize
        self.normals, self.sampling, self.sort_by_z = (POINT_RECIPES[recipe][k]
                                                       for k in ('normals', 'sampling', 'sort_by_z'))

    def _choose(self, xyz: np.ndarray) -> np.ndarray:
        if len(xyz) < self.num_points:
            return np.arange(self.num_points) % len(xyz)
        if self.sampling == 'furthest':
            return farthest_point_sampling(xyz, self.num_points)
        return np.random.permutation(len(xyz))[:self.num_points]

    def transform(self, results: dict) -> dict:
        points = read_points(results['points_path'], normals=self.normals).astype(np.float64)
        if self.normalize:  # a uniform scale and a shift leave unit normals unchanged
            points[:, :3] = fit_to_cube(points[:, :3], side=2.0)[0]
        points = points[self._choose(points[:, :3])]
        if self.sort_by_z:
            points = points[np.lexsort((points[:, 0], points[:, 1], points[:, 2]))]
        results['points'] = points.astype(np.float32)
        return results


@TRANSFORMS.register_module()
class PointCloudNoise(BaseTransform):
    """With probability ``prob``, add Gaussian noise of std ``std`` to the xyz of ``points`` (CAD-Recode v1.5:
    0.01, 0.5); normal columns, if any, are left as they are."""

    def __init__(self, std: float = 0.01, prob: float = 0.5) -> None:
        self.std, self.prob = std, prob

    def transform(self, results: dict) -> dict:
        if np.random.rand() < self.prob:
            points = results['points'].copy()
            points[:, :3] += np.random.normal(0.0, self.std, points[:, :3].shape)
            results['points'] = points.astype(np.float32)
        return results


@TRANSFORMS.register_module()
class LoadCADCode(BaseTransform):
    """Read the program at ``code_path`` into ``gt_code`` (samples without one, e.g. mesh-only test sets, pass)."""

    def transform(self, results: dict) -> dict:
        if results.get('code_path'):
            try:
                results['gt_code'] = Path(results['code_path']).read_text(encoding='utf-8')
            except (OSError, UnicodeDecodeError) as err:
                raise ValueError(f'Cannot read CAD program {results["code_path"]}: {err}') from None
        return results


@TRANSFORMS.register_module()
class TokenizeCADCode(BaseTransform):
    """``input_ids`` = ``<|im_start|> gt_code <|endoftext|>`` token ids (LongTensor) with the given tokenizer.

    Args:
        tokenizer: Local HF tokenizer folder (the same as the model's).
        max_code_tokens: Cut longer programs to this many tokens (None keeps all).
    """

    def __init__(self, tokenizer: str, max_code_tokens: Optional[int] = None) -> None:
        self.tokenizer_path, self.max_code_tokens = tokenizer, max_code_tokens
        self._tokenizer: Optional[CADCodeTokenizer] = None

    def transform(self, results: dict) -> dict:
        if 'gt_code' in results:
            if self._tokenizer is None:  # built lazily: cheap to pickle into dataloader workers
                self._tokenizer = CADCodeTokenizer(self.tokenizer_path)
            ids = self._tokenizer.encode(results['gt_code'], self.max_code_tokens)
            results['input_ids'] = torch.tensor(ids, dtype=torch.long)
        return results


@TRANSFORMS.register_module()
class PackCADInputs(BaseTransform):
    """``dict(inputs=points tensor (N, 3), data_samples=BaseDataElement)``.

    The data sample holds ``input_ids`` as data and the ``meta_keys`` present as metainfo; a data element (not a
    dict) so that ``pseudo_collate`` keeps one per sample.
    """

    META_KEYS = ('sample_idx', 'points_path', 'code_path', 'gt_code', 'gt_mesh_path')

    def __init__(self, meta_keys: Sequence[str] = META_KEYS) -> None:
        self.meta_keys = tuple(meta_keys)

    def transform(self, results: dict) -> dict:
        sample = BaseDataElement(metainfo={k: results[k] for k in self.meta_keys if k in results})
        if 'input_ids' in results:
            sample.input_ids = results['input_ids']
        return dict(inputs=torch.from_numpy(results['points']), data_samples=sample)
