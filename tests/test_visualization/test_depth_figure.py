"""Depth test figures: panel values (aligned prediction, error, masks) and one legible figure per sample."""
import cv2
import numpy as np
import pytest
import torch

from opentad_lora.visualization.depth import DepthVisualizationHook, depth_figure, depth_panels

S, H, W = 3, 42, 56  # the synthetic quickstart's test size: the old per-frame PNGs were this small


def _sample():
    torch.manual_seed(0)
    gt = torch.linspace(1, 5, W).expand(S, H, W) + torch.rand(S, H, W) * 0.2
    gt[:, :8] = float('inf')  # sky
    pred = (gt.clamp(max=6) - 0.3) / 2.0  # exactly gt = 2 pred + 0.3 on the valid pixels
    return dict(pred_depth=pred, pred_conf=1 + torch.rand(S, H, W), gt_depth=gt, valid_mask=torch.isfinite(gt),
                scene='scene_00', frame_names=[f'images/frame_{i:04d}.png' for i in range(S)])


def test_panels_align_the_prediction_and_mark_invalid_pixels():
    sample = _sample()
    image = torch.rand(3, H, W)
    panels = depth_panels(sample['pred_depth'][0], sample['pred_conf'][0], sample['gt_depth'][0],
                          sample['valid_mask'][0], image)
    assert [p.title.split(' ')[0] for p in panels] == ['input', 'prediction', 'ground', 'relative', 'confidence']
    np.testing.assert_allclose(panels[0].values, image.permute(1, 2, 0).numpy())
    assert panels[1].title == 'prediction (aligned: 2·d + 0.3)'
    valid = sample['valid_mask'][0].numpy()
    np.testing.assert_allclose(panels[1].values[valid], sample['gt_depth'][0].numpy()[valid], rtol=1e-5)
    assert np.isnan(panels[2].values[~valid]).all() and np.isnan(panels[3].values[~valid]).all()
    assert np.nanmax(panels[3].values) < 1e-5 and panels[3].title == 'relative error (AbsRel 0.000)'
    # Prediction and ground truth share the ground truth's 2nd-98th percentile range.
    low, high = np.percentile(sample['gt_depth'][0].numpy()[valid], [2, 98])
    assert (panels[1].vmin, panels[1].vmax) == (panels[2].vmin, panels[2].vmax) == pytest.approx((low, high))
    alone = depth_panels(sample['pred_depth'][0])
    assert [p.title for p in alone] == ['prediction'] and alone[0].vmax > alone[0].vmin


def test_hook_writes_one_legible_figure_per_sample_with_colour_bars(tmp_path):
    sample = _sample()
    hook = DepthVisualizationHook(enable=True, out_dir=str(tmp_path))
    hook.after_test_iter(None, 0, dict(inputs=[torch.rand(S, 3, H, W)]), [sample])
    files = sorted(p.name for p in (tmp_path / 'scene_00').iterdir())
    assert files == ['frame_0000-frame_0002.png']
    height, width = cv2.imread(str(tmp_path / 'scene_00' / files[0])).shape[:2]
    assert width >= 5 * 300 and height >= S * 250  # each 56x42 view drawn about 360 px wide
    row = depth_panels(sample['pred_depth'][0], sample['pred_conf'][0], sample['gt_depth'][0],
                       sample['valid_mask'][0], torch.rand(3, H, W))
    fig = depth_figure([row, row], ['a', 'b'])
    colour_bars = [ax for ax in fig.axes if ax.get_label() == '<colorbar>']
    assert len(fig.axes) == 2 * 5 + 2 * 4 and len(colour_bars) == 2 * 4  # every panel but the input has one
    assert sorted({ax.get_ylabel() for ax in colour_bars}) == ['confidence', 'depth', '|d − d*| / d*']
    hook.enable = False
    hook.after_test_iter(None, 1, None, [sample])
    assert len(list((tmp_path / 'scene_00').iterdir())) == 1
