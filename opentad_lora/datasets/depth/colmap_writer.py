"""Write COLMAP sparse models in the text and the binary format (the inverse of :mod:`.colmap`).

Used by ``tools/data/make_synthetic_scenes.py`` so that synthetic scenes go through the same reader as real ETH3D
scenes; the files are byte-for-byte what COLMAP's own writers produce for these records (apart from float
formatting in the text files).
"""
import os
import struct
from typing import Dict

import numpy as np

from .colmap import CAMERA_MODEL_IDS, MODEL_FILES, Camera, ColmapModel, Image, Point3D


def _fmt(values) -> str:
    return ' '.join(repr(float(v)) for v in values)


def write_cameras_text(cameras: Dict[int, Camera], path: str) -> None:
    lines = ['# Camera list with one line of data per camera:', '#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]',
             f'# Number of cameras: {len(cameras)}']
    lines += [f'{c.id} {c.model} {c.width} {c.height} {_fmt(c.params)}' for c in cameras.values()]
    _write_lines(path, lines)


def write_images_text(images: Dict[int, Image], path: str) -> None:
    mean_obs = np.mean([len(i.point3D_ids) for i in images.values()]) if images else 0.0
    lines = ['# Image list with two lines of data per image:',
             '#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME', '#   POINTS2D[] as (X, Y, POINT3D_ID)',
             f'# Number of images: {len(images)}, mean observations per image: {mean_obs}']
    for image in images.values():
        lines.append(f'{image.id} {_fmt(image.qvec)} {_fmt(image.tvec)} {image.camera_id} {image.name}')
        lines.append(' '.join(f'{float(x)!r} {float(y)!r} {int(pid)}'
                              for (x, y), pid in zip(image.xys, image.point3D_ids)))
    _write_lines(path, lines)


def write_points3D_text(points: Dict[int, Point3D], path: str) -> None:
    mean_track = np.mean([len(p.image_ids) for p in points.values()]) if points else 0.0
    lines = ['# 3D point list with one line of data per point:',
             '#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)',
             f'# Number of points: {len(points)}, mean track length: {mean_track}']
    for p in points.values():
        track = ' '.join(f'{int(i)} {int(j)}' for i, j in zip(p.image_ids, p.point2D_idxs))
        lines.append(f'{p.id} {_fmt(p.xyz)} {" ".join(str(int(c)) for c in p.rgb)} {float(p.error)!r} {track}'.rstrip())
    _write_lines(path, lines)


def write_cameras_binary(cameras: Dict[int, Camera], path: str) -> None:
    chunks = [struct.pack('<Q', len(cameras))]
    for c in cameras.values():
        chunks.append(struct.pack('<iiQQ', c.id, CAMERA_MODEL_IDS[c.model], c.width, c.height))
        chunks.append(np.asarray(c.params, dtype='<f8').tobytes())
    _write_bytes(path, chunks)


def write_images_binary(images: Dict[int, Image], path: str) -> None:
    chunks = [struct.pack('<Q', len(images))]
    for image in images.values():
        chunks.append(struct.pack('<i7di', image.id, *image.qvec, *image.tvec, image.camera_id))
        chunks.append(image.name.encode('utf-8') + b'\x00')
        points = np.zeros(len(image.point3D_ids), dtype=[('x', '<f8'), ('y', '<f8'), ('id', '<i8')])
        points['x'], points['y'], points['id'] = image.xys[:, 0], image.xys[:, 1], image.point3D_ids
        chunks += [struct.pack('<Q', len(points)), points.tobytes()]
    _write_bytes(path, chunks)


def write_points3D_binary(points: Dict[int, Point3D], path: str) -> None:
    chunks = [struct.pack('<Q', len(points))]
    for p in points.values():
        chunks.append(struct.pack('<Q3d3BdQ', p.id, *p.xyz, *(int(c) for c in p.rgb), p.error, len(p.image_ids)))
        chunks.append(np.stack([p.image_ids, p.point2D_idxs], axis=1).astype('<i4').tobytes())
    _write_bytes(path, chunks)


_WRITERS = {
    '.txt': (write_cameras_text, write_images_text, write_points3D_text),
    '.bin': (write_cameras_binary, write_images_binary, write_points3D_binary),
}


def write_model(model: ColmapModel, path: str, ext: str = '.bin') -> None:
    """Write ``model`` as ``cameras``/``images``/``points3D`` + ``ext`` (``'.txt'`` or ``'.bin'``) into ``path``."""
    if ext not in _WRITERS:
        raise ValueError(f"COLMAP model format must be '.txt' or '.bin', got {ext!r}.")
    os.makedirs(path, exist_ok=True)
    for writer, records, name in zip(_WRITERS[ext], model, MODEL_FILES):
        writer(records, os.path.join(path, name + ext))


def _write_lines(path: str, lines) -> None:
    with open(path, 'w', encoding='utf-8') as f:
        f.write('\n'.join(lines) + '\n')


def _write_bytes(path: str, chunks) -> None:
    with open(path, 'wb') as f:
        f.write(b''.join(chunks))
