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


@TRANSFORMS.register_module()
class LoadCADPointCloud(BaseTransform):
    """Read ``points_path`` (``.npy``/``.ply``), fit it to ``[-1, 1]`` and keep ``num_points`` by furthest point
    sampling (CAD-Recode v1.5: 256). Clouds with fewer points are repeated cyclically up to ``num_points``.

    Adds ``points`` ``(num_points, 3)`` float32.
    """

    def __init__(self, num_points: int = 256, normalize: bool = True) -> None:
        self.num_points, self.normalize = num_points, normalize

    def transform(self, results: dict) -> dict:
        points = read_points(results['points_path']).astype(np.float64)
        if self.normalize:
            points = fit_to_cube(points, side=2.0)[0]
        if len(points) >= self.num_points:
            points = points[farthest_point_sampling(points, self.num_points)]
        else:
            points = points[np.arange(self.num_points) % len(points)]
        results['points'] = points.astype(np.float32)
        return results


@TRANSFORMS.register_module()
class PointCloudNoise(BaseTransform):
    """With probability ``prob``, add Gaussian noise of std ``std`` to ``points`` (CAD-Recode v1.5: 0.01, 0.5)."""

    def __init__(self, std: float = 0.01, prob: float = 0.5) -> None:
        self.std, self.prob = std, prob

    def transform(self, results: dict) -> dict:
        if np.random.rand() < self.prob:
            points = results['points']
            results['points'] = (points + np.random.normal(0.0, self.std, points.shape)).astype(np.float32)
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
