"""One readable matplotlib figure per test sample: input, prediction, ground truth, error and confidence per view.

``tools/test.py --show-dir DIR`` turns :class:`DepthVisualizationHook` on. Each figure has one row per view and one
column per panel, every data panel with its own labelled colour bar; images are drawn at a legible size whatever
their resolution (nearest-neighbour, so small inputs stay sharp).
"""
import os
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.hooks import Hook
from torch import Tensor

from opentad_lora.evaluation.depth.functional import align_depth, valid_depth_mask
from opentad_lora.registry import HOOKS

PANEL_INCHES = 3.6  # width of one panel; about 360 px at the figure's 100 dpi


@dataclass
class Panel:
    """One image of the figure: RGB ``values`` (H, W, 3) in [0, 1], or scalars (H, W) drawn with ``cmap`` over
    ``[vmin, vmax]`` with a colour bar labelled ``label`` (NaN = no value, drawn grey)."""

    title: str
    values: np.ndarray
    cmap: Optional[str] = None
    vmin: float = 0.0
    vmax: float = 1.0
    label: str = ''


def _percentiles(values: np.ndarray, low: float = 2, high: float = 98) -> Tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    vmin, vmax = np.percentile(finite, [low, high])
    return float(vmin), float(vmax) if vmax > vmin else float(vmin) + 1e-6


def depth_panels(pred: Tensor, conf: Optional[Tensor] = None, gt: Optional[Tensor] = None,
                 mask: Optional[Tensor] = None, image: Optional[Tensor] = None, alignment: str = 'least_squares',
                 max_error: float = 0.5) -> List[Panel]:
    """The panels of one view: ``input``, ``prediction``, ``ground truth``, ``error``, ``confidence`` (when given).

    With a ground truth the prediction is aligned to it as :class:`DepthMetric` does, both depths share the colour
    range of the ground truth's 2nd-98th percentiles, and the error panel shows the relative error ``|d - d*| / d*``
    over ``[0, max_error]`` on the valid pixels (its title gives the view's AbsRel). Without one the prediction's own
    percentiles set its range.
    """
    panels = []
    if image is not None:
        panels.append(Panel('input', image.detach().float().cpu().permute(1, 2, 0).clamp(0, 1).numpy()))
    pred = pred.detach().double().cpu()
    title, gt_panels = 'prediction', []
    if gt is not None:
        gt = gt.detach().double().cpu()
        valid = valid_depth_mask(gt, None if mask is None else mask.cpu())
        if int(valid.sum()) >= 2:
            pred, scale, shift = align_depth(pred, gt, valid, alignment)
            if alignment != 'none':
                title = f'prediction (aligned: {scale:.3g}·d {"+" if shift >= 0 else "−"} {abs(shift):.3g})'
            gt_values = np.where(valid.numpy(), gt.numpy(), np.nan)
            error = np.where(valid.numpy(), ((pred - gt).abs() / gt.clamp(min=1e-12)).numpy(), np.nan)
            vmin, vmax = _percentiles(gt_values)
            gt_panels = [Panel('ground truth', gt_values, 'turbo', vmin, vmax, 'depth'),
                         Panel(f'relative error (AbsRel {np.nanmean(error):.3f})', error, 'inferno', 0.0, max_error,
                               '|d − d*| / d*')]
    if not gt_panels:
        vmin, vmax = _percentiles(pred.numpy())
    panels.append(Panel(title, pred.numpy(), 'turbo', vmin, vmax, 'depth'))
    panels += gt_panels
    if conf is not None:
        conf_values = conf.detach().double().cpu().numpy()
        panels.append(Panel('confidence', conf_values, 'viridis', *_percentiles(conf_values), label='confidence'))
    return panels


def _pyplot() -> Any:
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError(f'Depth figures need matplotlib ({err}); install it with `pip install matplotlib`.') from err
    return plt


def depth_figure(rows: Sequence[Sequence[Panel]], row_labels: Sequence[str], title: str = '') -> Any:
    """A matplotlib figure of ``rows`` of panels (one row per view), a colour bar beside every scalar panel."""
    plt = _pyplot()
    num_cols = max(len(row) for row in rows)
    height, width = rows[0][0].values.shape[:2]
    row_inches = PANEL_INCHES * height / width + 0.6
    fig, axes = plt.subplots(len(rows), num_cols, squeeze=False, dpi=100,
                             figsize=(num_cols * (PANEL_INCHES + 0.9), len(rows) * row_inches + 0.5))
    for axes_row, panels, label in zip(axes, rows, row_labels):
        for ax, panel in zip(axes_row, panels):
            if panel.cmap is None:
                ax.imshow(panel.values, interpolation='nearest')
            else:
                cmap = plt.get_cmap(panel.cmap).with_extremes(bad='0.8')
                shown = ax.imshow(np.ma.masked_invalid(panel.values), cmap=cmap, vmin=panel.vmin, vmax=panel.vmax,
                                  interpolation='nearest')
                fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03, label=panel.label)
            ax.set_title(panel.title, fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
        axes_row[0].set_ylabel(label, fontsize=10)
        for ax in axes_row[len(panels):]:
            ax.axis('off')
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return fig


def save_depth_figure(path: str, rows: Sequence[Sequence[Panel]], row_labels: Sequence[str],
                      title: str = '') -> str:
    """Write :func:`depth_figure` as the PNG ``path``; returns ``path``."""
    fig = depth_figure(rows, row_labels, title)
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    fig.savefig(path)
    _pyplot().close(fig)
    return path


@HOOKS.register_module()
class DepthVisualizationHook(Hook):
    """Write one figure per test sample (a multi-view sequence): per view its input, the prediction (aligned as the
    metric does), the ground truth, the relative error and the confidence, each with a colour bar.

    ``tools/test.py --show-dir DIR`` sets ``enable=True`` and ``out_dir=DIR``. Files are
    ``DIR/<scene>/<first frame>-<last frame>.png``; each prediction is a dict of ``DepthEstimator.predict``
    (``pred_depth``, ``pred_conf``, ``gt_depth``, ``valid_mask``, ``scene``, ``frame_names``); the input images come
    from the test batch.

    Args:
        enable: Write files (off by default so training and plain tests write nothing).
        out_dir: Output directory (default: ``<work_dir>/vis``).
        interval: Visualise every ``interval``-th test batch.
        alignment: How predictions are aligned to the ground truth for display (as ``DepthMetric``).
        max_error: Relative error at the top of the error colour bar.
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

    @staticmethod
    def _get(sample: dict, key: str, index: int) -> Optional[Tensor]:
        value = sample.get(key)
        return None if value is None else torch.as_tensor(value)[index]

    def after_test_iter(self, runner: Any, batch_idx: int, data_batch: Any = None,
                        outputs: Optional[Sequence[dict]] = None) -> None:
        if not self.enable or not outputs or batch_idx % self.interval:
            return
        out_dir = self.out_dir or os.path.join(runner.work_dir, 'vis')
        inputs = data_batch.get('inputs') if isinstance(data_batch, dict) else None
        for sample_index, sample in enumerate(outputs):
            pred = torch.as_tensor(sample['pred_depth'])
            names = sample.get('frame_names') or [f'{batch_idx:06d}_{sample_index}_{i}' for i in range(len(pred))]
            stems = [os.path.splitext(os.path.basename(str(name)))[0] for name in names]
            images = None if inputs is None else torch.as_tensor(inputs[sample_index])
            rows = [depth_panels(pred[i], self._get(sample, 'pred_conf', i), self._get(sample, 'gt_depth', i),
                                 self._get(sample, 'valid_mask', i), None if images is None else images[i],
                                 self.alignment, self.max_error) for i in range(len(pred))]
            scene = str(sample.get('scene') or 'scene')
            path = os.path.join(out_dir, scene, f'{stems[0]}-{stems[-1]}.png')
            save_depth_figure(path, rows, stems, title=f'{scene}: {stems[0]} … {stems[-1]}')
