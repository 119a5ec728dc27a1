"""Point-cloud geometry shared by the CAD data pipeline and the CAD metric: cube fitting and furthest point sampling.

Plain numpy, so neither data generation nor evaluation needs pytorch3d, trimesh or CadQuery.
"""
from typing import Tuple

import numpy as np


def fit_to_cube(points: np.ndarray, side: float = 2.0, center: float = 0.0) -> Tuple[np.ndarray, np.ndarray, float]:
    """Centre ``points`` on their bounding box and scale them so that the largest extent equals ``side``.

    CAD-Recode feeds points fitted to ``[-1, 1]`` (``side=2``); the metric compares meshes fitted to ``[0, 1]``
    (``side=1, center=0.5``).

    Args:
        points: ``(N, 3)`` coordinates (any float dtype).
        side: Largest extent after scaling.
        center: Coordinate of the bounding-box centre after the move (the same on every axis).

    Returns:
        ``(fitted, bbox_centre, scale)`` with ``fitted = (points - bbox_centre) * scale + center``; a degenerate
        input (all points equal) is only moved (``scale = 1``).
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0:
        raise ValueError(f'Expected a non-empty (N, 3) array of points, got shape {points.shape}.')
    low, high = points.min(0), points.max(0)
    bbox_centre = (low + high) / 2.0
    extent = float((high - low).max())
    scale = side / extent if extent > 1e-12 else 1.0
    return (points - bbox_centre) * scale + center, bbox_centre, scale


def farthest_point_sampling(points: np.ndarray, k: int, start: int = 0) -> np.ndarray:
    """Indices of ``k`` points chosen by furthest point sampling (as ``pytorch3d.ops.sample_farthest_points``).

    Starts from index ``start`` (pytorch3d's default is the first point) and repeatedly adds the point furthest
    from the chosen set. When ``k >= len(points)`` every index is returned, in order.
    """
    points = np.asarray(points, dtype=np.float64)
    n = len(points)
    if k >= n:
        return np.arange(n)
    columns = np.ascontiguousarray(points.T)  # per-axis rows: in-place updates without temporaries (8x faster)
    chosen = np.empty(k, dtype=np.int64)
    chosen[0] = start
    nearest, sq, diff = np.full(n, np.inf), np.empty(n), np.empty(n)
    for i in range(k):
        if i:
            chosen[i] = int(np.argmax(nearest))
        sq.fill(0.0)
        for axis in range(3):
            np.subtract(columns[axis], columns[axis, chosen[i]], out=diff)
            np.multiply(diff, diff, out=diff)
            sq += diff
        np.minimum(nearest, sq, out=nearest)
    return chosen
