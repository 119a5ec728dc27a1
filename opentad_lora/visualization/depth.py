"""Colour-mapped depth, confidence and error PNGs, and the test hook that writes them (``--show-dir``)."""
import os
from typing import Any, Dict, Optional, Sequence

import cv2
import numpy as np
import torch
from mmengine.hooks import Hook
from torch import Tensor

from opentad_lora.evaluation.depth.functional import align_depth, valid_depth_mask
from opentad_lora.registry import HOOKS


def colorize(values: np.ndarray, vmin: float, vmax: float, colormap: int = cv2.COLORMAP_TURBO,
             valid: Optional[np.ndarray] = None) -> np.ndarray:
    """(H, W) values -> (H, W, 3) uint8 RGB with ``colormap`` over ``[vmin, vmax]``; invalid pixels black."""
    scaled = (np.clip((values - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0) * 255).astype(np.uint8)
    rgb = cv2.applyColorMap(scaled, colormap)[:, :, ::-1].copy()
    if valid is not None:
        rgb[~valid] = 0
    return rgb


def depth_panels(pred: Tensor, conf: Optional[Tensor] = None, gt: Optional[Tensor] = None,
                 mask: Optional[Tensor] = None, alignment: str = 'least_squares',
                 max_error: float = 0.5) -> Dict[str, np.ndarray]:
    """RGB images of one view: ``depth`` (and ``gt``, ``error``, ``confidence`` when given).

    With a ground truth the prediction is aligned to it as the metric does, both depths share the colour range of
    the ground truth's 2nd-98th percentiles, and ``error`` maps the per-pixel relative error ``|d - d*| / d*`` over
    ``[0, max_error]`` on valid pixels. Without one the prediction's own percentiles set the range.
    """
    pred = pred.detach().double().cpu()
    panels = {}
    if gt is not None:
        gt = gt.detach().double().cpu()
        valid = valid_depth_mask(gt, None if mask is None else mask.cpu())
        if int(valid.sum()) >= 2:
            pred = align_depth(pred, gt, valid, alignment)[0]
            low, high = np.percentile(gt[valid].numpy(), [2, 98])
            panels['gt'] = colorize(gt.numpy(), low, high, valid=valid.numpy())
            error = ((pred - gt).abs() / gt.clamp(min=1e-12)).numpy()
            panels['error'] = colorize(error, 0.0, max_error, cv2.COLORMAP_INFERNO, valid=valid.numpy())
    if 'gt' not in panels:
        low, high = np.percentile(pred.numpy(), [2, 98])
    panels['depth'] = colorize(pred.numpy(), low, high)
    if conf is not None:
        conf = conf.detach().double().cpu().numpy()
        panels['confidence'] = colorize(conf, *np.percentile(conf, [2, 98]), colormap=cv2.COLORMAP_VIRIDIS)
    return panels


def save_depth_panels(out_dir: str, stem: str, panels: Dict[str, np.ndarray]) -> Dict[str, str]:
    """Write ``<out_dir>/<stem>_<panel>.png`` for every panel; return the paths by panel name."""
    paths = {}
    for name, rgb in panels.items():
        path = os.path.join(out_dir, f'{stem}_{name}.png')
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not cv2.imwrite(path, rgb[:, :, ::-1]):
            raise OSError(f'Could not write {path}')
        paths[name] = path
    return paths


@HOOKS.register_module()
class DepthVisualizationHook(Hook):
    """Write depth / ground truth / error / confidence PNGs of the test predictions.

    ``tools/test.py --show-dir DIR`` sets ``enable=True`` and ``out_dir=DIR``. Files are
    ``DIR/<scene>/<frame>_{depth,gt,error,confidence}.png``; each prediction is a dict of ``DepthEstimator.predict``
    (``pred_depth``, ``pred_conf``, ``gt_depth``, ``valid_mask``, ``scene``, ``frame_names``).

    Args:
        enable: Write files (off by default so training and plain tests write nothing).
        out_dir: Output directory (default: ``<work_dir>/vis``).
        interval: Visualise every ``interval``-th test batch.
        alignment: How predictions are aligned to the ground truth for display (as ``DepthMetric``).
        max_error: Relative error mapped to the top of the error colour map.
    """

    priority = 'NORMAL'

    def __init__(self, enable: bool = False, out_dir: Optional[str] = None, interval: int = 1,
                 alignment: str = 'least_squares', max_error: float = 0.5) -> None:
        if interval < 1:
            raise ValueError(f'interval must be >= 1, got {interval}.')
        self.enable = enable
        self.out_dir = out_dir
        self.interval = interval
        self.alignment = alignment
        self.max_error = max_error

    def after_test_iter(self, runner: Any, batch_idx: int, data_batch: Any = None,
                        outputs: Optional[Sequence[dict]] = None) -> None:
        if not self.enable or not outputs or batch_idx % self.interval:
            return
        out_dir = self.out_dir or os.path.join(runner.work_dir, 'vis')
        for sample_index, sample in enumerate(outputs):
            pred = torch.as_tensor(sample['pred_depth'])
            names = sample.get('frame_names') or [f'{batch_idx:06d}_{sample_index}_{i}' for i in range(len(pred))]
            scene = str(sample.get('scene') or 'scene')
            for index, name in enumerate(names):
                conf = sample.get('pred_conf')
                gt = sample.get('gt_depth')
                mask = sample.get('valid_mask')
                panels = depth_panels(pred[index], None if conf is None else torch.as_tensor(conf)[index],
                                      None if gt is None else torch.as_tensor(gt)[index],
                                      None if mask is None else torch.as_tensor(mask)[index], self.alignment,
                                      self.max_error)
                save_depth_panels(os.path.join(out_dir, scene), os.path.splitext(os.path.basename(name))[0], panels)
