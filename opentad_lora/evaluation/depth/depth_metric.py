"""``DepthMetric``: AbsRel, MAE, δ<1.25 (and SqRel, RMSE, RMSE-log, log10, SILog, i-RMSE, δ², δ³) after alignment,
per scene and mean, plus the validation loss the model reports."""
from collections import defaultdict
from typing import Any, Dict, List, Optional, Sequence

import torch
from mmengine.evaluator import BaseMetric

from opentad_lora.registry import METRICS
from .functional import ALIGNMENTS, METRIC_NAMES, align_depth, compute_depth_metrics, valid_depth_mask


@METRICS.register_module()
class DepthMetric(BaseMetric):
    """Depth metrics of multi-view predictions, Marigold's ETH3D protocol by default.

    Every frame of every predicted sequence is one image: the prediction is aligned to the ground truth on the valid
    pixels (least-squares scale and shift, or median scaling), clipped to ``[min_depth, max_depth]`` and scored. The
    results are the mean over all images (``depth/abs_rel``...) and the mean over the images of each scene
    (``depth/<scene>/abs_rel``...); AbsRel and δ are fractions (multiply by 100 for the papers' tables). MAE is
    the seed's "Depth MAE", in the ground truth's units (metres for ETH3D) after alignment. The names and formulas
    are in :func:`~opentad_lora.evaluation.depth.functional.depth_error_metrics`.

    Each prediction (a dict) must hold ``pred_depth`` and ``gt_depth`` of shape (S, H, W) and may hold
    ``valid_mask`` (S, H, W), ``scene`` (str), ``frame_names`` (S names) and ``val_loss`` (the training loss of its
    batch, from ``DepthEstimator.predict``): their mean over the samples is reported as ``depth/val_loss``, the
    seed's validation loss.

    Args:
        alignment: ``'least_squares'`` (scale and shift, Marigold), ``'median'`` (scale only) or ``'none'``.
        align_per: ``'frame'`` fits one alignment per image (Marigold); ``'sequence'`` one per predicted sequence,
            which also rewards a scale that is consistent across the views.
        min_depth: Smallest valid ground truth; aligned predictions are clipped up to it.
        max_depth: Largest valid ground truth; aligned predictions are clipped down to it.
        per_scene: Also report each scene's mean.
        collect_device: Where results of all ranks are gathered.
        prefix: Key prefix (default ``'depth'``).
    """

    default_prefix: Optional[str] = 'depth'

    def __init__(self, alignment: str = 'least_squares', align_per: str = 'frame', min_depth: float = 1e-5,
                 max_depth: float = float('inf'), per_scene: bool = True, collect_device: str = 'cpu',
                 prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        if alignment not in ALIGNMENTS:
            raise ValueError(f'Unknown alignment {alignment!r}; use one of {ALIGNMENTS}.')
        if align_per not in ('frame', 'sequence'):
            raise ValueError(f"align_per must be 'frame' or 'sequence', got {align_per!r}.")
        self.alignment = alignment
        self.align_per = align_per
        self.min_depth = min_depth
        self.max_depth = max_depth
        self.per_scene = per_scene

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        """Score every frame of every sample now, so only a few floats per image are kept."""
        for sample in data_samples:
            pred = torch.as_tensor(sample['pred_depth']).detach().cpu().double()
            gt = torch.as_tensor(sample['gt_depth']).detach().cpu().double()
            mask = sample.get('valid_mask')
            mask = None if mask is None else torch.as_tensor(mask).detach().cpu().bool()
            if pred.shape != gt.shape:
                raise ValueError(f'pred_depth {tuple(pred.shape)} and gt_depth {tuple(gt.shape)} differ in shape.')
            if self.align_per == 'sequence':
                valid = valid_depth_mask(gt, mask, self.min_depth, self.max_depth)
                pred, _, _ = align_depth(pred, gt, valid, self.alignment)
            alignment = self.alignment if self.align_per == 'frame' else 'none'
            scene = str(sample.get('scene', 'all'))
            names = sample.get('frame_names') or [str(i) for i in range(pred.shape[0])]
            frames = []
            for index in range(pred.shape[0]):
                frame_mask = None if mask is None else mask[index]
                if not valid_depth_mask(gt[index], frame_mask, self.min_depth, self.max_depth).any():
                    continue
                metrics = compute_depth_metrics(pred[index], gt[index], frame_mask, alignment, self.min_depth,
                                                self.max_depth)
                frames.append(dict(scene=scene, frame=str(names[index]), **{k: metrics[k] for k in METRIC_NAMES}))
            # One result per sample: MMEngine keeps len(dataset) results when it gathers them across ranks.
            loss = sample.get('val_loss')
            self.results.append(dict(frames=frames, val_loss=None if loss is None else float(loss)))

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        losses = [r['val_loss'] for r in results if r['val_loss'] is not None]
        results = [frame for r in results for frame in r['frames']]
        if not results:
            raise ValueError('DepthMetric got no frame with a valid ground-truth pixel.')
        out = {name: sum(r[name] for r in results) / len(results) for name in METRIC_NAMES}
        if losses:
            out['val_loss'] = sum(losses) / len(losses)
        if self.per_scene:
            by_scene = defaultdict(list)
            for result in results:
                by_scene[result['scene']].append(result)
            for scene, items in sorted(by_scene.items()):
                for name in METRIC_NAMES:
                    out[f'{scene}/{name}'] = sum(r[name] for r in items) / len(items)
        return out
