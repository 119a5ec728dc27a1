"""Pure maths of the CAD metric on triangle meshes: normalisation, surface sampling, Chamfer distance and volumetric
IoU, in numpy/torch (no trimesh, scipy or CadQuery).

Conventions follow CAD-Recode / cadrille ``evaluate.py``: both meshes are centred on their bounding box and scaled by
their largest extent into ``[0, 1]^3``; CD is ``mean(d^2 pred->gt) + mean(d^2 gt->pred)`` over 8192 surface samples
each (reported x 1000); IoU is the volume of the intersection over the volume of the union.
"""
from typing import Tuple

import numpy as np
import torch

from opentad_lora.datasets.cad.geometry import fit_to_cube

Mesh = Tuple[np.ndarray, np.ndarray]  # (vertices (V, 3) float, faces (F, 3) int)


def normalize_mesh(vertices: np.ndarray) -> np.ndarray:
    """Vertices centred on their bounding box and scaled by their largest extent into ``[0, 1]^3``."""
    return fit_to_cube(vertices, side=1.0, center=0.5)[0]


def triangle_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    tri = np.asarray(vertices, np.float64)[faces]
    return 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)


def mesh_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    """Signed volume (divergence theorem); positive for a closed mesh with outward-facing triangles."""
    tri = np.asarray(vertices, np.float64)[faces]
    return float(np.einsum('ij,ij->i', tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6.0)


def sample_surface(vertices: np.ndarray, faces: np.ndarray, n: int, rng: np.random.Generator,
                   normals: bool = False) -> np.ndarray:
    """``n`` points uniform on the mesh surface: triangles chosen by area, then uniform barycentric coordinates.

    With ``normals`` the result is ``(n, 6)``: each point followed by the unit normal of its triangle (right-hand
    rule of the vertex order, outward for a mesh wound outward; CAD-Recode v1's face normals). The draws are the
    same either way.
    """
    areas = triangle_areas(vertices, faces)
    if not areas.sum() > 0:
        raise ValueError('Cannot sample the surface of a mesh with zero area.')
    tri = np.asarray(vertices, np.float64)[faces[rng.choice(len(faces), size=n, p=areas / areas.sum())]]
    u, v = rng.random((2, n, 1))
    flip = (u + v) > 1
    u, v = np.where(flip, 1 - u, u), np.where(flip, 1 - v, v)
    points = tri[:, 0] + u * (tri[:, 1] - tri[:, 0]) + v * (tri[:, 2] - tri[:, 0])
    if not normals:
        return points
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    return np.concatenate([points, normal / np.linalg.norm(normal, axis=1, keepdims=True)], axis=1)


def nearest_sq_dist(query: np.ndarray, reference: np.ndarray, max_pairs: int = 1 << 23) -> np.ndarray:
    """Squared distance from every ``query`` point to its nearest ``reference`` point (exact; chunks of at most
    ``max_pairs`` distances, 64 MiB)."""
    ref = torch.as_tensor(reference, dtype=torch.float64)
    chunk = max(1, max_pairs // max(len(reference), 1))
    out = [torch.cdist(torch.as_tensor(query[i:i + chunk], dtype=torch.float64), ref).min(1).values ** 2
           for i in range(0, len(query), chunk)]
    return torch.cat(out).numpy()


def chamfer_distance(points_a: np.ndarray, points_b: np.ndarray) -> float:
    """``mean_a min_b |a-b|^2 + mean_b min_a |a-b|^2`` (squared distances, summed over both directions)."""
    return float(nearest_sq_dist(points_a, points_b).mean() + nearest_sq_dist(points_b, points_a).mean())


def mesh_chamfer_distance(mesh_a: Mesh, mesh_b: Mesh, n_points: int = 8192, seed: int = 0) -> float:
    """Chamfer distance between ``n_points`` surface samples of each mesh.

    Each mesh is sampled with its own generator seeded with ``seed``, so the result is repeatable and two meshes of
    the same triangulation get corresponding samples (a pure translation moves every sample by the same vector).
    """
    points_a = sample_surface(*mesh_a, n_points, np.random.default_rng(seed))
    points_b = sample_surface(*mesh_b, n_points, np.random.default_rng(seed))
    return chamfer_distance(points_a, points_b)


def _column_crossings(vertices: np.ndarray, faces: np.ndarray, xy: np.ndarray,
                      chunk: int = 1 << 22) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where the vertical lines through ``xy`` cross the mesh: ``(column index, z, +1 entering / -1 leaving)``.

    A triangle whose outward normal points down (-z) is entered by a line going up; one facing up is left.
    """
    tri = np.asarray(vertices, np.float64)[faces]
    if mesh_volume(vertices, faces) < 0:  # inward-facing triangles: flip the orientation
        tri = tri[:, ::-1]
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    det = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (b[:, 1] - a[:, 1])
    keep = np.abs(det) > 1e-15  # vertical triangles are never crossed by a vertical line
    a, b, c, det = a[keep], b[keep], c[keep], det[keep]
    cols, zs, signs = [], [], []
    step = max(1, chunk // max(len(a), 1))
    for start in range(0, len(xy), step):
        px, py = xy[start:start + step, :1], xy[start:start + step, 1:]
        w1 = ((px - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (py - a[:, 1])) / det
        w2 = ((b[:, 0] - a[:, 0]) * (py - a[:, 1]) - (px - a[:, 0]) * (b[:, 1] - a[:, 1])) / det
        hit = (w1 >= 0) & (w2 >= 0) & (w1 + w2 <= 1)
        col, face = np.nonzero(hit)
        w1, w2 = w1[col, face], w2[col, face]
        zs.append(a[face, 2] + w1 * (b[face, 2] - a[face, 2]) + w2 * (c[face, 2] - a[face, 2]))
        signs.append(np.where(det[face] < 0, 1, -1))
        cols.append(col + start)
    return np.concatenate(cols), np.concatenate(zs), np.concatenate(signs)


def _inside_intervals(crossings: Tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict:
    """``{column: [(z_in, z_out), ...]}`` where the winding number is positive (overlapping components count once)."""
    cols, zs, signs = crossings
    order = np.lexsort((zs, cols))
    cols, zs, signs = cols[order], zs[order], signs[order]
    bounds = np.flatnonzero(np.diff(cols)) + 1
    out = {}
    for col, col_z, col_s in zip(np.split(cols, bounds), np.split(zs, bounds), np.split(signs, bounds)):
        intervals, winding, z_start = [], 0, 0.0
        for z, s in zip(col_z.tolist(), col_s.tolist()):
            if winding <= 0 < winding + s:
                z_start = z
            elif winding > 0 >= winding + s:
                intervals.append((z_start, z))
            winding += s
        if len(col):
            out[int(col[0])] = intervals
    return out


def _overlap(first: list, second: list) -> float:
    """Total length of the intersection of two sorted lists of disjoint intervals."""
    total, i, j = 0.0, 0, 0
    while i < len(first) and j < len(second):
        total += max(0.0, min(first[i][1], second[j][1]) - max(first[i][0], second[j][0]))
        if first[i][1] < second[j][1]:
            i += 1
        else:
            j += 1
    return total


def volumetric_iou(mesh_a: Mesh, mesh_b: Mesh, resolution: int = 64) -> float:
    """Volume of intersection over volume of union of two closed meshes, by ray casting.

    Vertical lines through a ``resolution^2`` grid of cell centres over the joint bounding box are cut by each mesh
    into inside intervals (exact in z; positive winding number, so overlapping components count once); the IoU is
    the ratio of the summed interval lengths. The grid is offset by an irrational fraction of a cell so that lines
    miss triangle edges. Exact for solids whose walls are vertical or axis-aligned within the grid footprint,
    otherwise within O(1/resolution).
    """
    vertices = np.concatenate([mesh_a[0], mesh_b[0]])
    low, high = vertices[:, :2].min(0), vertices[:, :2].max(0)
    frac = (np.arange(resolution) + 0.5 + np.array([[np.sqrt(2) - 1.4], [np.sqrt(3) - 1.7]]) * 1e-3) / resolution
    gx, gy = np.meshgrid(low[0] + frac[0] * (high[0] - low[0]), low[1] + frac[1] * (high[1] - low[1]),
                         indexing='ij')
    xy = np.stack([gx.ravel(), gy.ravel()], 1)
    inside_a = _inside_intervals(_column_crossings(*mesh_a, xy))
    inside_b = _inside_intervals(_column_crossings(*mesh_b, xy))
    inter = union = 0.0
    for column in set(inside_a) | set(inside_b):
        ia, ib = inside_a.get(column, []), inside_b.get(column, [])
        both = _overlap(ia, ib)
        inter += both
        union += sum(z1 - z0 for z0, z1 in ia) + sum(z1 - z0 for z0, z1 in ib) - both
    return inter / union if union > 0 else 0.0
