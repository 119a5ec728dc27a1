"""Render small multi-view scenes with exact geometry and write them in ETH3D's layout.

A scene is a room of axis-aligned textured rectangles (floor, back and left walls, a box), ray-cast with numpy from
cameras on an arc. Each scene directory gets what the ETH3D high-res multi-view download has::

    <scene>/images/dslr_images_undistorted/frame_XXXX.png       RGB images
    <scene>/dslr_calibration_undistorted/{cameras,images,points3D}.{txt,bin}   COLMAP model, text AND binary
    <scene>/ground_truth_depth/dslr_images/frame_XXXX.png       raw float32 depth (ETH3D format), inf = no surface

The sparse points are pixel centres of random pixels back-projected with the exact depth, so the point of a pixel of
its source image has exactly that pixel's ground-truth depth; tracks list every image that sees the point (checked
by ray-casting the exact sub-pixel ray, so occluded views are left out).
"""
import os
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np

from .colmap import Camera, ColmapModel, Image, Point3D
from .colmap_writer import write_model
from .geometry import camera_intrinsics, project_points, rotmat_to_qvec

IMAGE_DIR = 'images'
IMAGE_SUBDIR = 'dslr_images_undistorted'
SPARSE_DIR = 'dslr_calibration_undistorted'
DEPTH_DIR = os.path.join('ground_truth_depth', 'dslr_images')

# A rectangle: (constant axis a, its value, (low, high) on axis (a+1)%3, (low, high) on axis (a+2)%3, RGB, frequency).
Rect = Tuple[int, float, Tuple[float, float], Tuple[float, float], np.ndarray, float]


def build_room(rng: np.random.Generator) -> List[Rect]:
    """Floor (y = 1.5, y points down), back wall (z = 8), left wall (x = -4) and a random box on the floor."""
    colours = rng.uniform(60, 230, size=(6, 3))
    rects: List[Rect] = [
        (1, 1.5, (-2.0, 9.0), (-4.0, 4.0), colours[0], 2.0),
        (2, 8.0, (-4.0, 4.0), (-2.5, 1.5), colours[1], 1.5),
        (0, -4.0, (-2.5, 1.5), (-2.0, 8.0), colours[2], 1.0),
    ]
    size = rng.uniform(0.8, 1.6, size=3)
    centre = np.array([rng.uniform(-0.8, 0.8), 1.5 - size[1] / 2, rng.uniform(3.5, 4.5)])
    low, high = centre - size / 2, centre + size / 2
    for axis in range(3):
        u_axis, v_axis = (axis + 1) % 3, (axis + 2) % 3
        for bound in (low[axis], high[axis]):
            rects.append((axis, float(bound), (low[u_axis], high[u_axis]), (low[v_axis], high[v_axis]),
                          colours[3 + axis], 3.0))
    return rects


def raycast(rects: Sequence[Rect], origin: np.ndarray, dirs: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Nearest hit of the rays ``origin + t * dirs`` (N, 3): ``t`` (inf on a miss) and the rectangle index (-1)."""
    best_t = np.full(len(dirs), np.inf)
    best_idx = np.full(len(dirs), -1, dtype=np.int64)
    for index, (axis, value, u_range, v_range, _, _) in enumerate(rects):
        with np.errstate(divide='ignore', invalid='ignore'):
            t = (value - origin[axis]) / dirs[:, axis]
        hit = origin + t[:, None] * dirs
        u, v = hit[:, (axis + 1) % 3], hit[:, (axis + 2) % 3]
        ok = (t > 1e-6) & (u >= u_range[0]) & (u <= u_range[1]) & (v >= v_range[0]) & (v <= v_range[1])
        closer = ok & (t < best_t)
        best_t[closer], best_idx[closer] = t[closer], index
    return best_t, best_idx


def shade(rects: Sequence[Rect], points: np.ndarray, index: np.ndarray) -> np.ndarray:
    """RGB (N, 3) uint8 texture at world ``points``: checkerboard x stripes on each rectangle's own colour."""
    rgb = np.zeros((len(points), 3))
    for rect_index, (axis, _, _, _, colour, freq) in enumerate(rects):
        sel = index == rect_index
        u, v = points[sel, (axis + 1) % 3], points[sel, (axis + 2) % 3]
        checker = (np.floor(u * freq) + np.floor(v * freq)) % 2
        stripes = 0.5 + 0.5 * np.sin(7.0 * u + 3.0 * v)
        rgb[sel] = colour * (0.55 + 0.3 * checker[:, None] + 0.15 * stripes[:, None])
    return np.clip(rgb, 0, 255).astype(np.uint8)


def look_at(position: np.ndarray, target: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """World-to-camera ``(R, t)`` of an OpenCV camera (x right, y down, z forward) at ``position`` facing ``target``."""
    forward = (target - position) / np.linalg.norm(target - position)
    right = np.cross(np.array([0.0, 1.0, 0.0]), forward)
    right /= np.linalg.norm(right)
    rotation = np.stack([right, np.cross(forward, right), forward])
    return rotation, -rotation @ position


def camera_rays(intrinsics: np.ndarray, rotation: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """World directions (N, 3) of the pixel positions ``(u, v)`` whose camera-frame z component is 1."""
    cam = np.linalg.solve(intrinsics, np.stack([u, v, np.ones_like(u)]))
    return (rotation.T @ cam).T


def render(rects: Sequence[Rect], intrinsics: np.ndarray, rotation: np.ndarray, translation: np.ndarray,
           height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
    """Depth (H, W) float32 (inf where nothing is hit) and RGB (H, W, 3) uint8 at the pixel centres."""
    rows, cols = np.mgrid[0:height, 0:width]
    dirs = camera_rays(intrinsics, rotation, cols.ravel() + 0.5, rows.ravel() + 0.5)
    origin = -rotation.T @ translation
    depth, index = raycast(rects, origin, dirs)
    rgb = np.full((len(dirs), 3), 235, dtype=np.uint8)
    hit = index >= 0
    rgb[hit] = shade(rects, origin + depth[hit, None] * dirs[hit], index[hit])
    return depth.reshape(height, width).astype(np.float32), rgb.reshape(height, width, 3)


def make_cameras(rng: np.random.Generator, num_frames: int, height: int,
                 width: int) -> Tuple[Dict[int, Camera], List[Tuple[int, np.ndarray, np.ndarray]]]:
    """A PINHOLE and a SIMPLE_PINHOLE camera, and ``(camera_id, R, t)`` of frames on an arc facing the box."""
    focal = 0.9 * width
    cameras = {
        1: Camera(1, 'PINHOLE', width, height, np.array([focal, focal * 1.02, width / 2 + 0.3, height / 2 - 0.2])),
        2: Camera(2, 'SIMPLE_PINHOLE', width, height, np.array([focal * 0.95, width / 2, height / 2])),
    }
    target = np.array([0.0, 0.9, 4.0])
    poses = []
    for index, angle in enumerate(np.linspace(-0.6, 0.6, num_frames) + rng.uniform(-0.05, 0.05, num_frames)):
        position = target + np.array([4.2 * np.sin(angle), rng.uniform(-1.6, -1.0), -4.2 * np.cos(angle)])
        rotation, translation = look_at(position, target + rng.uniform(-0.3, 0.3, 3))
        poses.append((1 + index % 2, rotation, translation))
    return cameras, poses


def sample_points(rng: np.random.Generator, rects: Sequence[Rect], cameras: Dict[int, Camera], poses: list,
                  depths: List[np.ndarray], points_per_image: int, unmatched_per_image: int) -> ColmapModel:
    """Back-project random pixel centres of every frame, find each point's track and build the COLMAP model."""
    xyz_list, rgb_list = [], []
    for (camera_id, rotation, translation), depth in zip(poses, depths):
        rows, cols = np.nonzero(np.isfinite(depth))
        pick = rng.choice(len(rows), size=min(points_per_image, len(rows)), replace=False)
        u, v = cols[pick] + 0.5, rows[pick] + 0.5
        dirs = camera_rays(camera_intrinsics(cameras[camera_id]), rotation, u, v)
        points = -rotation.T @ translation + depth[rows[pick], cols[pick], None] * dirs
        _, index = raycast(rects, -rotation.T @ translation, dirs)
        xyz_list.append(points)
        rgb_list.append(shade(rects, points, index))
    xyz, rgb = np.concatenate(xyz_list), np.concatenate(rgb_list)
    tracks: List[List[Tuple[int, int]]] = [[] for _ in range(len(xyz))]
    images: Dict[int, Image] = {}
    for image_id, (camera_id, rotation, translation) in enumerate(poses, 1):
        camera = cameras[camera_id]
        u, v, z = project_points(xyz, rotation, translation, camera_intrinsics(camera))
        inside = (z > 1e-6) & (u >= 0) & (u < camera.width) & (v >= 0) & (v < camera.height)
        hit_t, _ = raycast(rects, -rotation.T @ translation, camera_rays(camera_intrinsics(camera), rotation, u, v))
        visible = np.nonzero(inside & (np.abs(hit_t - z) <= 1e-6 * np.maximum(z, 1.0)))[0]
        uv = np.stack([u, v], axis=1)
        extra = rng.uniform([0, 0], [camera.width, camera.height], size=(unmatched_per_image, 2))
        for point2d_idx, point_idx in enumerate(visible):
            tracks[point_idx].append((image_id, point2d_idx))
        images[image_id] = Image(image_id, rotmat_to_qvec(rotation), translation.copy(), camera_id,
                                 f'{IMAGE_SUBDIR}/frame_{image_id - 1:04d}.png',
                                 np.concatenate([uv[visible], extra]),
                                 np.concatenate([visible + 1, -np.ones(unmatched_per_image, dtype=np.int64)]))
    points3d = {}
    for idx, track in enumerate(tracks):
        track = np.array(track, dtype=np.int64).reshape(-1, 2)
        points3d[idx + 1] = Point3D(idx + 1, xyz[idx], rgb[idx], float(rng.uniform(0.1, 1.0)), track[:, 0].copy(),
                                    track[:, 1].copy())
    return ColmapModel(cameras, images, points3d)


def make_synthetic_scene(out_dir: str, name: str, num_frames: int = 10, height: int = 120, width: int = 160,
                         points_per_image: int = 200, unmatched_per_image: int = 10, seed: int = 0) -> str:
    """Render one scene into ``out_dir/name`` (layout in the module docstring) and return its directory."""
    rng = np.random.default_rng(seed)
    rects = build_room(rng)
    cameras, poses = make_cameras(rng, num_frames, height, width)
    scene_dir = os.path.join(out_dir, name)
    os.makedirs(os.path.join(scene_dir, IMAGE_DIR, IMAGE_SUBDIR), exist_ok=True)
    os.makedirs(os.path.join(scene_dir, DEPTH_DIR), exist_ok=True)
    depths = []
    for index, (camera_id, rotation, translation) in enumerate(poses):
        depth, rgb = render(rects, camera_intrinsics(cameras[camera_id]), rotation, translation, height, width)
        file_name = f'frame_{index:04d}.png'
        if not cv2.imwrite(os.path.join(scene_dir, IMAGE_DIR, IMAGE_SUBDIR, file_name), rgb[:, :, ::-1]):
            raise OSError(f'Could not write {os.path.join(scene_dir, IMAGE_DIR, IMAGE_SUBDIR, file_name)}')
        depth.astype('<f4').tofile(os.path.join(scene_dir, DEPTH_DIR, file_name))
        depths.append(depth)
    model = sample_points(rng, rects, cameras, poses, depths, points_per_image, unmatched_per_image)
    for ext in ('.txt', '.bin'):
        write_model(model, os.path.join(scene_dir, SPARSE_DIR), ext)
    return scene_dir


def make_synthetic_scenes(out_dir: str, num_scenes: int = 2, seed: int = 0, **kwargs) -> List[str]:
    """Render ``num_scenes`` scenes ``scene_XX`` (geometry from ``seed + i``); kwargs: :func:`make_synthetic_scene`."""
    return [make_synthetic_scene(out_dir, f'scene_{i:02d}', seed=seed + i, **kwargs) for i in range(num_scenes)]
