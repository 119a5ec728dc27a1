"""``HandMeshMetric``: FreiHAND's PA-MPJPE, PA-MPVPE (mm) and F@5mm / F@15mm over a dataset."""
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from mmengine.evaluator import BaseMetric

from opentad_lora.registry import METRICS
from .functional import f_score, mean_point_error, pa_error, procrustes_align


def _numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if hasattr(value, 'detach') else np.asarray(value)


@METRICS.register_module()
class HandMeshMetric(BaseMetric):
    """Hand-mesh accuracy as FreiHAND's evaluator computes it (HaMeR's FreiHAND protocol).

    Per sample, predicted keypoints and vertices are Procrustes-aligned (scale, rotation, translation) to the
    ground truth, separately; the errors are averaged over samples. Samples without ground-truth vertices count
    for PA-MPJPE only. Inputs are in metres, PA errors are reported in millimetres.

    Expects from the model (``mode='predict'``) per sample: ``pred_keypoints_3d``, ``pred_vertices``,
    ``gt_keypoints_3d`` (a 4th confidence column is dropped), and optionally ``gt_vertices`` + ``gt_has_vertices``.

    Args:
        f_thresholds: F-score thresholds in metres (FreiHAND: 5 mm and 15 mm).
        collect_device, prefix: As for :class:`~mmengine.evaluator.BaseMetric`.
    """

    default_prefix = 'hand'

    def __init__(self, f_thresholds: Sequence[float] = (0.005, 0.015), collect_device: str = 'cpu',
                 prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.f_thresholds = tuple(f_thresholds)

    def process(self, data_batch: Any, data_samples: Sequence[Dict[str, Any]]) -> None:
        for sample in data_samples:
            result = dict(pa_mpjpe=pa_error(_numpy(sample['pred_keypoints_3d']),
                                            _numpy(sample['gt_keypoints_3d'])[:, :3]))
            if 'gt_vertices' in sample and float(_numpy(sample.get('gt_has_vertices', 1.0))) > 0:
                pred, gt = _numpy(sample['pred_vertices']), _numpy(sample['gt_vertices'])
                aligned = procrustes_align(pred, gt)
                result['pa_mpvpe'] = mean_point_error(aligned, gt)
                result['f_scores'] = [f_score(aligned, gt, t) for t in self.f_thresholds]
            self.results.append(result)

    def compute_metrics(self, results: List[Dict[str, Any]]) -> Dict[str, float]:
        metrics = {'PA-MPJPE': 1000 * float(np.mean([r['pa_mpjpe'] for r in results]))}
        with_mesh = [r for r in results if 'pa_mpvpe' in r]
        if with_mesh:
            metrics['PA-MPVPE'] = 1000 * float(np.mean([r['pa_mpvpe'] for r in with_mesh]))
            scores = np.mean([r['f_scores'] for r in with_mesh], axis=0)
            for threshold, score in zip(self.f_thresholds, scores):
                metrics[f'F@{1000 * threshold:g}mm'] = float(score)
        return metrics
