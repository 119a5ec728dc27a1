"""CADMetric end to end: programs run in the sandbox, meshes normalised, CD / IoU / IR aggregated."""
import importlib.util

import numpy as np
import pytest

from opentad_lora.datasets.cad import SHAPE_MAKERS, random_shape
from opentad_lora.evaluation.cad import CADMetric
from opentad_lora.evaluation.cad.functional import mesh_chamfer_distance, normalize_mesh, triangle_areas

HAS_CADQUERY = importlib.util.find_spec('cadquery') is not None
CUBE_FACES = [[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
              [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]]


def box_program(size, low=(0, 0, 0)):
    """A program for the 'arrays' mesher: r = (vertices, faces) of an axis-aligned box."""
    corners = [[low[0] + x * size[0], low[1] + y * size[1], low[2] + z * size[2]]
               for x in (0, 1) for y in (0, 1) for z in (0, 1)]
    return f'r = ({corners}, {CUBE_FACES})\n'


def box_mesh(size):
    return (np.array([[x * size[0], y * size[1], z * size[2]] for x in (0, 1) for y in (0, 1) for z in (0, 1)],
                     dtype=np.float64), np.array(CUBE_FACES))


def run_metric(metric, pairs):
    metric.process(None, [dict(pred_code=pred, gt_code=gt, sample_idx=i) for i, (pred, gt) in enumerate(pairs)])
    return metric.evaluate(len(pairs))


def test_metric_on_known_shapes():
    metric = CADMetric(mesher='arrays', n_points=2048, iou_resolution=64, timeout=1.0)
    gt = box_program((1, 1, 1))
    pairs = [
        (box_program((3, 3, 3), low=(5, -2, 7)), gt),  # a scaled, moved cube: identical once normalised
        (box_program((2, 2, 1)), gt),                  # half as high: normalised z in [0.25, 0.75], IoU 1/2
        ('while True:\n    pass\n', gt),               # timeout: invalid
        ('import os\nos.remove("/etc/hostname")\n', gt),  # refused: invalid
    ]
    results = run_metric(metric, pairs)
    half_cd = mesh_chamfer_distance((normalize_mesh(box_mesh((2, 2, 1))[0]), box_mesh((2, 2, 1))[1]),
                                    box_mesh((1, 1, 1)), 2048)
    assert results['cad/ir'] == pytest.approx(50.0)
    assert results['cad/iou'] == pytest.approx(100 * (1.0 + 0.5) / 2)
    assert results['cad/mean_cd'] == pytest.approx(1e3 * (0.0 + half_cd) / 2)
    assert results['cad/median_cd'] == pytest.approx(1e3 * half_cd / 2)
    assert results['cad/num_samples'] == 4


def test_ground_truth_mesh_file_and_invalid_ground_truth(tmp_path):
    from opentad_lora.datasets.cad.io import write_mesh

    path = write_mesh(tmp_path / 'gt.stl', *box_mesh((1, 1, 1)))
    metric = CADMetric(mesher='arrays', n_points=1024)
    metric.process(None, [dict(pred_code=box_program((1, 1, 1)), gt_mesh_path=str(path)),
                          dict(pred_code=box_program((1, 1, 1)), gt_code='raise ValueError')])
    results = metric.evaluate(2)
    assert results['cad/num_samples'] == 1  # the sample with an invalid ground-truth program is skipped
    assert results['cad/iou'] == pytest.approx(100.0) and results['cad/mean_cd'] == pytest.approx(0.0)


def test_nan_scores_come_with_the_count_and_reason_of_invalid_predictions(monkeypatch):
    from mmengine.logging import MMLogger

    warnings = []
    monkeypatch.setattr(MMLogger.get_current_instance(), 'warning', warnings.append)
    metric = CADMetric(mesher='arrays', n_points=256, timeout=1.0)
    gt = box_program((1, 1, 1))
    results = run_metric(metric, [('raise ValueError("no solid")\n', gt),
                                  ('r = ([[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[0, 1, 2]])\n', gt),  # 1 triangle
                                  ('x = (1\n', gt)])
    assert np.isnan(results['cad/mean_cd']) and np.isnan(results['cad/iou'])
    assert (results['cad/ir'], results['cad/num_valid'], results['cad/num_samples']) == (100.0, 0.0, 3.0)
    assert warnings == ["CADMetric: 3 of 3 predictions are invalid: error 2 (e.g. 'ValueError: no solid'), "
                        "invalid_shape 1 (e.g. '1 faces (fewer than 3)'); no prediction is valid, so CD and IoU "
                        "are nan."]
    warnings.clear()
    results = run_metric(metric, [(gt, gt), ('raise ValueError("no solid")\n', gt)])
    assert results['cad/num_valid'] == 1.0 and results['cad/iou'] == pytest.approx(100.0)
    assert warnings == ["CADMetric: 1 of 2 predictions are invalid: error 1 (e.g. 'ValueError: no solid'); CD and "
                        "IoU are over the 1 valid ones."]
    metric.sandbox.close()


@pytest.fixture(scope='module')
def cadquery_metric():
    if not HAS_CADQUERY:
        pytest.skip('needs the cad extra (cadquery)')
    metric = CADMetric(n_points=2048, iou_resolution=64, timeout=3.0)
    yield metric
    metric.sandbox.close()


def test_metric_executes_real_cadquery_programs(cadquery_metric):
    gt = "import cadquery as cq\nr = cq.Workplane('XY').box(200, 200, 200)\n"
    pairs = [("import cadquery as cq\nr = cq.Workplane('XY').box(20, 20, 20)\n", gt),
             ("import cadquery as cq\nr = cq.Workplane('XY').box(200, 200, 100)\n", gt),
             ("import cadquery as cq\nr = cq.Workplane('XY').box(200, 200, 200).faces('>Z').workplane().hole(",
              gt),
             ("import cadquery as cq\nwhile True:\n    pass\n", gt)]
    results = run_metric(cadquery_metric, pairs)
    assert results['cad/ir'] == pytest.approx(50.0)
    assert results['cad/iou'] == pytest.approx(100 * (1.0 + 0.5) / 2, abs=1e-6)


def point_triangle_distance(points, vertices, faces):
    """Distance from each point to the nearest triangle (projection inside the triangle, else nearest edge)."""
    a, b, c = (vertices[faces[:, k]][None] for k in range(3))
    p = points[:, None]
    normal = np.cross(b - a, c - a)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    height = np.einsum('pfk,pfk->pf', p - a, np.broadcast_to(normal, (len(points),) + normal.shape[1:]))
    foot = p - height[..., None] * normal
    inside = np.ones(height.shape, dtype=bool)
    for u, v in ((a, b), (b, c), (c, a)):
        inside &= np.einsum('pfk,pfk->pf', np.cross(v - u, foot - u), np.broadcast_to(normal, foot.shape)) >= 0
    best = np.where(inside, np.abs(height), np.inf)
    for u, v in ((a, b), (b, c), (c, a)):
        t = np.clip(np.einsum('pfk,pfk->pf', p - u, np.broadcast_to(v - u, foot.shape))
                    / np.einsum('...k,...k->...', v - u, v - u), 0, 1)
        best = np.minimum(best, np.linalg.norm(p - (u + t[..., None] * (v - u)), axis=-1))
    return best.min(1)


def test_synthetic_solids_match_their_cadquery_tessellation(cadquery_metric):
    """The generator's analytic surfaces are the surfaces CadQuery builds from the programs: every analytic sample
    lies on the tessellated mesh (within its chord error, measured up to 0.03 units of 200) and the areas
    agree (holes of the right size)."""
    rng = np.random.default_rng(5)
    for kind in sorted(SHAPE_MAKERS):
        shape = random_shape(rng, [kind])
        result = cadquery_metric.sandbox.run(shape.code)
        assert result.valid, (kind, result.error)
        assert triangle_areas(result.vertices, result.faces).sum() == pytest.approx(shape.area, rel=2e-3)
        distance = point_triangle_distance(shape.sample_surface(200, rng).astype(np.float64), result.vertices,
                                           result.faces)
        assert distance.max() < 0.1, (kind, distance.max())  # 1 unit off would read 1.0
