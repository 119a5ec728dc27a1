"""CAD metric maths against hand-computed values: IoU of offset cubes, Chamfer distance of known point sets."""
import numpy as np
import pytest

from opentad_lora.evaluation.cad.functional import (chamfer_distance, mesh_chamfer_distance, mesh_volume,
                                                    normalize_mesh, sample_surface, volumetric_iou)

# The 12 outward-facing triangles of the unit cube on the corners (x, y, z) in {0, 1}^3 (index = 4x + 2y + z).
CUBE_FACES = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                       [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])


def box(low=(0, 0, 0), size=(1, 1, 1)):
    corners = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], dtype=np.float64)
    return corners * np.asarray(size, np.float64) + np.asarray(low, np.float64), CUBE_FACES.copy()


def test_cube_volume_and_orientation():
    vertices, faces = box(size=(2, 3, 4))
    assert mesh_volume(vertices, faces) == pytest.approx(24.0)
    assert mesh_volume(vertices, faces[:, ::-1]) == pytest.approx(-24.0)


@pytest.mark.parametrize('d', [0.0, 0.1, 0.25, 0.5, 0.9])
def test_iou_of_unit_cubes_offset_along_z_is_exact(d):
    assert volumetric_iou(box(), box((0, 0, d))) == pytest.approx((1 - d) / (1 + d), abs=1e-12)


@pytest.mark.parametrize('d', [0.1, 0.3, 0.6])
def test_iou_of_unit_cubes_offset_sideways_within_grid_error(d):
    # Offset along x: the column grid over [0, 1 + d] resolves the overlap to about one cell (1.4 / resolution).
    resolution = 128
    expected = (1 - d) / (1 + d)
    assert volumetric_iou(box(), box((d, 0, 0)), resolution) == pytest.approx(expected, abs=2.0 / resolution)


def test_iou_of_offset_boxes_in_three_axes():
    d = np.array([0.2, 0.1, 0.3])
    inter = np.prod(1 - d)
    expected = inter / (2 - inter)
    assert volumetric_iou(box(), box(d), 128) == pytest.approx(expected, abs=0.02)


def test_iou_disjoint_identical_and_flipped():
    assert volumetric_iou(box(), box((2, 0, 0))) == 0.0
    assert volumetric_iou(box(), box()) == pytest.approx(1.0)
    vertices, faces = box((0, 0, 0.5))
    assert volumetric_iou(box(), (vertices, faces[:, ::-1])) == pytest.approx(1 / 3)  # inward-facing mesh


def test_iou_counts_overlapping_components_once():
    # Two overlapping unit cubes given as one mesh cover the 1.5 x 1 x 1 box: IoU with that box is 1, not 2/3.
    (va, fa), (vb, fb) = box(), box((0, 0, 0.5))
    union = (np.concatenate([va, vb]), np.concatenate([fa, fb + len(va)]))
    assert volumetric_iou(union, box(size=(1, 1, 1.5))) == pytest.approx(1.0)


def test_chamfer_distance_of_hand_made_point_sets():
    a = np.array([[0.0, 0, 0], [10, 0, 0]])
    b = np.array([[0.0, 0, 1], [10, 0, 0], [10, 2, 0]])
    # a->b squared: 1, 0 (mean 0.5); b->a squared: 1, 0, 4 (mean 5/3).
    assert chamfer_distance(a, b) == pytest.approx(0.5 + 5 / 3)
    assert chamfer_distance(b, a) == pytest.approx(0.5 + 5 / 3)
    assert chamfer_distance(a, a) == 0.0


def test_mesh_chamfer_distance_of_a_square_moved_along_its_normal_is_2d2():
    square = (np.array([[0.0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]]), np.array([[0, 1, 2], [0, 2, 3]]))
    d = 0.05
    moved = (square[0] + np.array([0, 0, d]), square[1])
    # Same seed -> corresponding samples differ by (0, 0, d), and no other sample is nearer: CD = d^2 + d^2.
    assert mesh_chamfer_distance(square, moved, n_points=2048) == pytest.approx(2 * d * d, rel=1e-9)


def test_sample_surface_is_uniform_by_area():
    rng = np.random.default_rng(0)
    # Two disjoint triangles, areas 0.5 and 2.0: 20% / 80% of the samples.
    vertices = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [5, 0, 0], [7, 0, 0], [5, 2, 0]])
    points = sample_surface(vertices, np.array([[0, 1, 2], [3, 4, 5]]), 20000, rng)
    first = points[:, 0] <= 1
    assert first.mean() == pytest.approx(0.2, abs=0.01)
    assert np.all(points[first, 0] + points[first, 1] <= 1 + 1e-12)
    assert points[first, :2].mean(0) == pytest.approx([1 / 3, 1 / 3], abs=0.01)  # centroid of the triangle


def test_normalize_mesh_fits_the_unit_cube():
    vertices = box((-3, 5, 1), (4, 2, 1))[0]
    fitted = normalize_mesh(vertices)
    assert fitted.max(0) - fitted.min(0) == pytest.approx([1.0, 0.5, 0.25])
    assert (fitted.max(0) + fitted.min(0)) / 2 == pytest.approx([0.5, 0.5, 0.5])
