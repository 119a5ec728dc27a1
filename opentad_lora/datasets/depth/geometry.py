"""Camera geometry of COLMAP models: rotations, pinhole intrinsics, resizing and sparse depth by projection.

Pixel coordinates follow COLMAP: the top-left pixel covers ``[0, 1) x [0, 1)``, so its centre is (0.5, 0.5), a
point projecting to ``(u, v)`` falls in pixel ``(floor(v), floor(u))``, and resizing an image by ``(sx, sy)``
multiplies ``fx, cx`` by ``sx`` and ``fy, cy`` by ``sy`` exactly.
"""
from typing import Tuple

import numpy as np

from .colmap import Camera

PINHOLE_MODELS = ('SIMPLE_PINHOLE', 'PINHOLE')


def qvec_to_rotmat(qvec: np.ndarray) -> np.ndarray:
    """Rotation matrix of the (normalised) quaternion ``(w, x, y, z)``."""
    w, x, y, z = np.asarray(qvec, dtype=np.float64) / np.linalg.norm(qvec)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def rotmat_to_qvec(rot: np.ndarray) -> np.ndarray:
    """Unit quaternion ``(w, x, y, z)`` with ``w >= 0`` of a rotation matrix (Shepperd's stable branch choice)."""
    r = np.asarray(rot, dtype=np.float64)
    trace = np.trace(r)
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        qvec = [0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s]
    elif r[0, 0] > r[1, 1] and r[0, 0] > r[2, 2]:
        s = 2.0 * np.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2])
        qvec = [(r[2, 1] - r[1, 2]) / s, 0.25 * s, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s]
    elif r[1, 1] > r[2, 2]:
        s = 2.0 * np.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2])
        qvec = [(r[0, 2] - r[2, 0]) / s, (r[0, 1] + r[1, 0]) / s, 0.25 * s, (r[1, 2] + r[2, 1]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1])
        qvec = [(r[1, 0] - r[0, 1]) / s, (r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, 0.25 * s]
    qvec = np.asarray(qvec) / np.linalg.norm(qvec)
    return -qvec if qvec[0] < 0 else qvec


def camera_intrinsics(camera: Camera) -> np.ndarray:
    """3x3 pinhole matrix ``K`` of a ``SIMPLE_PINHOLE`` or ``PINHOLE`` camera.

    Raises:
        ValueError: for a distorted model (undistort the images first, e.g. ETH3D's ``*_undistorted`` data).
    """
    if camera.model == 'SIMPLE_PINHOLE':
        fx = fy = camera.params[0]
        cx, cy = camera.params[1:3]
    elif camera.model == 'PINHOLE':
        fx, fy, cx, cy = camera.params
    else:
        raise ValueError(f'Camera {camera.id} has the distorted model {camera.model}; depth loading supports '
                         f'{PINHOLE_MODELS} (use undistorted images, e.g. ETH3D dslr_calibration_undistorted).')
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def scale_intrinsics(intrinsics: np.ndarray, scale_x: float, scale_y: float) -> np.ndarray:
    """Intrinsics of the image resized by ``(scale_x, scale_y)`` (COLMAP's pixel-corner convention)."""
    out = np.array(intrinsics, dtype=np.float64)
    out[0] *= scale_x
    out[1] *= scale_y
    return out


def project_points(points: np.ndarray, rotation: np.ndarray, translation: np.ndarray,
                   intrinsics: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Project world ``points`` (N, 3) with world-to-camera ``(R, t)``; return pixel ``u``, ``v`` and depth ``z``."""
    cam = points @ rotation.T + translation
    z = cam[:, 2]
    with np.errstate(divide='ignore', invalid='ignore'):
        u = intrinsics[0, 0] * cam[:, 0] / z + intrinsics[0, 1] * cam[:, 1] / z + intrinsics[0, 2]
        v = intrinsics[1, 1] * cam[:, 1] / z + intrinsics[1, 2]
    return u, v, z


def sparse_depth_map(points: np.ndarray, rotation: np.ndarray, translation: np.ndarray, intrinsics: np.ndarray,
                     height: int, width: int, min_depth: float = 1e-6) -> np.ndarray:
    """(H, W) float32 depth of the pixels hit by projected ``points``, 0 elsewhere.

    Each point lands in the pixel containing its projection; where several land in one pixel the nearest wins
    (a z-buffer), so an occluded point cannot overwrite a visible one.
    """
    depth = np.full((height, width), np.inf, dtype=np.float64)
    if len(points):
        u, v, z = project_points(np.asarray(points, dtype=np.float64), rotation, translation, intrinsics)
        keep = (z > min_depth) & np.isfinite(u) & np.isfinite(v) & (u >= 0) & (u < width) & (v >= 0) & (v < height)
        cols = np.floor(u[keep]).astype(np.int64)
        rows = np.floor(v[keep]).astype(np.int64)
        np.minimum.at(depth, (rows, cols), z[keep])
    depth[~np.isfinite(depth)] = 0.0
    return depth.astype(np.float32)


def resize_nearest(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize that samples each output pixel centre (no half-pixel shift, no value mixing)."""
    rows = np.minimum(((np.arange(height) + 0.5) * array.shape[0] / height).astype(np.int64), array.shape[0] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * array.shape[1] / width).astype(np.int64), array.shape[1] - 1)
    return array[rows[:, None], cols[None, :]]
