"""Plain numpy/OpenCV mesh rendering (painter's algorithm, two-sided Lambert shading) for hands.

Good enough for synthetic training images, demo overlays and side views, with no GL or pyrender dependency.
"""
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

_SUBPIXEL_BITS = 4
DEFAULT_COLOR = (0.65, 0.74, 0.86)  # light blue, BGR in [0, 1]


def render_mesh(vertices: np.ndarray, faces: np.ndarray, K: np.ndarray, image_size: Tuple[int, int],
                background: Optional[np.ndarray] = None, face_colors: Optional[np.ndarray] = None,
                color: Sequence[float] = DEFAULT_COLOR, light_dir: Sequence[float] = (0.3, -0.4, -1.0),
                alpha: float = 1.0) -> Tuple[np.ndarray, np.ndarray]:
    """Rasterise a mesh given in camera coordinates (x right, y down, z forward).

    Args:
        vertices: ``(V, 3)`` points in the camera frame (metres).
        faces: ``(F, 3)`` vertex indices.
        K: ``(3, 3)`` intrinsics.
        image_size: ``(height, width)``.
        background: Optional BGR uint8 image to draw onto (black if None).
        face_colors: Optional ``(F, 3)`` BGR colours in [0, 1]; otherwise ``color`` everywhere.
        color: Uniform BGR colour in [0, 1].
        light_dir: Direction the light travels, in camera coordinates.
        alpha: Opacity of the mesh over the background.

    Returns:
        ``(image uint8 (H, W, 3), mask bool (H, W))`` where the mask marks covered pixels.
    """
    height, width = image_size
    image = np.zeros((height, width, 3), np.uint8) if background is None else background.copy()
    layer = np.zeros((height, width, 3), np.float32)
    mask = np.zeros((height, width), np.uint8)
    vertices = np.asarray(vertices, np.float64)
    tri = vertices[faces]
    visible = (tri[..., 2] > 1e-3).all(axis=1)
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12
    light = -np.asarray(light_dir, np.float64) / np.linalg.norm(light_dir)
    shade = 0.35 + 0.65 * np.abs(normals @ light)
    colors = np.broadcast_to(np.asarray(color, np.float64), (len(faces), 3)) if face_colors is None else face_colors
    uv = (vertices @ np.asarray(K, np.float64).T)
    uv = uv[:, :2] / np.clip(uv[:, 2:3], 1e-6, None)
    pixels = np.round(uv * (1 << _SUBPIXEL_BITS)).astype(np.int64)
    depth = tri[..., 2].mean(axis=1)
    for face in np.argsort(-depth):
        if not visible[face]:
            continue
        polygon = pixels[faces[face]].astype(np.int32)
        if np.abs(polygon).max() > 2 ** 26:  # far outside the image: OpenCV would overflow
            continue
        cv2.fillConvexPoly(layer, polygon, tuple(float(c) for c in colors[face] * shade[face] * 255),
                           shift=_SUBPIXEL_BITS)
        cv2.fillConvexPoly(mask, polygon, 1, shift=_SUBPIXEL_BITS)
    covered = mask.astype(bool)
    blended = image.astype(np.float32)
    blended[covered] = (1 - alpha) * blended[covered] + alpha * layer[covered]
    return np.clip(blended, 0, 255).astype(np.uint8), covered


def side_view_vertices(vertices: np.ndarray, angle_deg: float = 90.0) -> np.ndarray:
    """The mesh turned by ``angle_deg`` about the vertical (y) axis through its centroid, for a side view."""
    theta = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(theta), 0.0, np.sin(theta)], [0.0, 1.0, 0.0], [-np.sin(theta), 0.0, np.cos(theta)]])
    center = vertices.mean(axis=0)
    return (vertices - center) @ rot.T + center
