"""Read COLMAP sparse models (``cameras``, ``images``, ``points3D``) in the text and the binary format.

The layouts are COLMAP's (``src/colmap/scene/reconstruction_io.cc``): text files with ``#`` comments and, in
``images.txt``, two lines per image (the pose line, then a possibly empty ``X Y POINT3D_ID`` line); little-endian
binary files with a ``uint64`` record count. Quaternions are COLMAP's ``(qw, qx, qy, qz)``; ``(qvec, tvec)`` map
world to camera coordinates (OpenCV axes). A missing file raises ``FileNotFoundError`` and a malformed one
``ValueError``, both naming the file (and the line for text files).
"""
import os
import struct
from dataclasses import dataclass, field
from typing import Callable, Dict, List, NamedTuple, Tuple

import numpy as np

# COLMAP camera models: id -> (name, number of parameters).
CAMERA_MODELS: Dict[int, Tuple[str, int]] = {
    0: ('SIMPLE_PINHOLE', 3), 1: ('PINHOLE', 4), 2: ('SIMPLE_RADIAL', 4), 3: ('RADIAL', 5), 4: ('OPENCV', 8),
    5: ('OPENCV_FISHEYE', 8), 6: ('FULL_OPENCV', 12), 7: ('FOV', 5), 8: ('SIMPLE_RADIAL_FISHEYE', 4),
    9: ('RADIAL_FISHEYE', 5), 10: ('THIN_PRISM_FISHEYE', 12),
}
CAMERA_MODEL_IDS: Dict[str, int] = {name: model_id for model_id, (name, _) in CAMERA_MODELS.items()}
MODEL_FILES = ('cameras', 'images', 'points3D')


@dataclass
class Camera:
    """One COLMAP camera: ``model`` name, image ``width``/``height`` in pixels and the model's ``params``."""

    id: int
    model: str
    width: int
    height: int
    params: np.ndarray


@dataclass
class Image:
    """One registered image: world-to-camera ``qvec`` (w, x, y, z) and ``tvec``, its camera, file name and 2D points.

    ``xys`` (N, 2) are keypoint positions in COLMAP pixel coordinates (the centre of the top-left pixel is
    (0.5, 0.5)); ``point3D_ids`` (N,) their 3D point ids, -1 where unmatched.
    """

    id: int
    qvec: np.ndarray
    tvec: np.ndarray
    camera_id: int
    name: str
    xys: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    point3D_ids: np.ndarray = field(default_factory=lambda: np.zeros((0, ), dtype=np.int64))


@dataclass
class Point3D:
    """One triangulated point: world ``xyz``, ``rgb`` colour, reprojection ``error`` and its track."""

    id: int
    xyz: np.ndarray
    rgb: np.ndarray
    error: float
    image_ids: np.ndarray
    point2D_idxs: np.ndarray


class ColmapModel(NamedTuple):
    """A sparse reconstruction: ``{id: Camera}``, ``{id: Image}``, ``{id: Point3D}``."""

    cameras: Dict[int, Camera]
    images: Dict[int, Image]
    points3D: Dict[int, Point3D]


# -- text -----------------------------------------------------------------------------------------------------------
def _data_lines(path: str) -> List[Tuple[int, str]]:
    """``(line number, stripped text)`` of every line of ``path`` that is not a ``#`` comment (blank lines kept)."""
    _require(path)
    with open(path, 'r', encoding='utf-8') as f:
        return [(num, line.strip()) for num, line in enumerate(f, 1) if not line.lstrip().startswith('#')]


def _parse_text(path: str, parse: Callable[[List[Tuple[int, str]]], dict]) -> dict:
    try:
        return parse(_data_lines(path))
    except _LineError as err:
        raise ValueError(f'{path}:{err.line}: malformed COLMAP text line ({err.reason}).') from None
    except UnicodeDecodeError as err:
        raise ValueError(f'{path}: not a COLMAP text file ({err}).') from None


class _LineError(Exception):

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(reason)
        self.line, self.reason = line, reason


def _numbers(line: int, text: str, kind: Callable = float) -> list:
    try:
        return [kind(v) for v in text.split()]
    except ValueError:
        raise _LineError(line, f'expected numbers, got {text[:60]!r}') from None


def _camera(camera_id: int, model: str, width: int, height: int, params: list, line: int) -> Camera:
    if model not in CAMERA_MODEL_IDS:
        raise _LineError(line, f'unknown camera model {model!r}')
    expected = CAMERA_MODELS[CAMERA_MODEL_IDS[model]][1]
    if len(params) != expected:
        raise _LineError(line, f'camera model {model} needs {expected} parameters, got {len(params)}')
    return Camera(camera_id, model, width, height, np.asarray(params, dtype=np.float64))


def read_cameras_text(path: str) -> Dict[int, Camera]:
    """``cameras.txt``: ``CAMERA_ID MODEL WIDTH HEIGHT PARAMS...`` per line."""

    def parse(lines):
        cameras = {}
        for num, text in lines:
            if not text:
                continue
            elems = text.split()
            if len(elems) < 4:
                raise _LineError(num, 'expected CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]')
            camera_id, width, height = _numbers(num, ' '.join([elems[0], *elems[2:4]]), int)
            cameras[camera_id] = _camera(camera_id, elems[1], width, height, _numbers(num, ' '.join(elems[4:])), num)
        return cameras

    return _parse_text(path, parse)


def read_images_text(path: str) -> Dict[int, Image]:
    """``images.txt``: a pose line ``IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME`` then a ``X Y POINT3D_ID`` line."""

    def parse(lines):
        images, index = {}, 0
        while index < len(lines):
            num, text = lines[index]
            index += 1
            if not text:
                continue
            elems = text.split()
            if len(elems) < 10:
                raise _LineError(num, 'expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME')
            values = _numbers(num, ' '.join(elems[1:8]))
            image_id, camera_id = _numbers(num, f'{elems[0]} {elems[8]}', int)
            points = lines[index][1].split() if index < len(lines) else []
            points_line = lines[index][0] if index < len(lines) else num + 1
            index += 1
            if len(points) % 3:
                raise _LineError(points_line, f'POINTS2D needs triplets X Y POINT3D_ID, got {len(points)} values')
            data = np.asarray(_numbers(points_line, ' '.join(points)), dtype=np.float64).reshape(-1, 3)
            images[image_id] = Image(image_id, np.asarray(values[:4]), np.asarray(values[4:7]), camera_id,
                                     ' '.join(elems[9:]), data[:, :2].copy(), data[:, 2].astype(np.int64))
        return images

    return _parse_text(path, parse)


def read_points3D_text(path: str) -> Dict[int, Point3D]:
    """``points3D.txt``: ``POINT3D_ID X Y Z R G B ERROR (IMAGE_ID POINT2D_IDX)...`` per line."""

    def parse(lines):
        points = {}
        for num, text in lines:
            if not text:
                continue
            elems = text.split()
            if len(elems) < 8 or (len(elems) - 8) % 2:
                raise _LineError(num, 'expected POINT3D_ID X Y Z R G B ERROR followed by (IMAGE_ID, POINT2D_IDX) pairs')
            point_id = _numbers(num, elems[0], int)[0]
            xyz_err = _numbers(num, ' '.join(elems[1:4] + elems[7:8]))
            track = np.asarray(_numbers(num, ' '.join(elems[8:]), int), dtype=np.int64).reshape(-1, 2)
            points[point_id] = Point3D(point_id, np.asarray(xyz_err[:3]),
                                       np.asarray(_numbers(num, ' '.join(elems[4:7]), int), dtype=np.uint8),
                                       xyz_err[3], track[:, 0].copy(), track[:, 1].copy())
        return points

    return _parse_text(path, parse)


# -- binary ---------------------------------------------------------------------------------------------------------
class _Reader:
    """Sequential little-endian reads from a byte buffer."""

    def __init__(self, data: bytes) -> None:
        self.data, self.offset = data, 0

    def read(self, fmt: str) -> tuple:
        values = struct.unpack_from('<' + fmt, self.data, self.offset)
        self.offset += struct.calcsize('<' + fmt)
        return values

    def array(self, dtype: str, count: int) -> np.ndarray:
        dtype = np.dtype(dtype).newbyteorder('<')
        end = self.offset + dtype.itemsize * count
        if end > len(self.data):
            raise struct.error(f'needs {end} bytes, file has {len(self.data)}')
        values = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.offset)
        self.offset = end
        return values

    def name(self) -> str:
        end = self.data.index(b'\x00', self.offset)
        text = self.data[self.offset:end].decode('utf-8')
        self.offset = end + 1
        return text


def _parse_binary(path: str, parse: Callable[[_Reader], dict]) -> dict:
    _require(path)
    with open(path, 'rb') as f:
        reader = _Reader(f.read())
    try:
        records = parse(reader)
    except (struct.error, ValueError, UnicodeDecodeError, KeyError) as err:
        raise ValueError(f'{path}: corrupt or truncated COLMAP binary file ({err}).') from None
    if reader.offset != len(reader.data):
        raise ValueError(f'{path}: corrupt COLMAP binary file ({len(reader.data) - reader.offset} trailing bytes).')
    return records


def read_cameras_binary(path: str) -> Dict[int, Camera]:
    """``cameras.bin``: per camera ``int32 id, int32 model_id, uint64 width, uint64 height, float64 params[]``."""

    def parse(reader):
        cameras = {}
        for _ in range(reader.read('Q')[0]):
            camera_id, model_id, width, height = reader.read('iiQQ')
            if model_id not in CAMERA_MODELS:
                raise ValueError(f'unknown camera model id {model_id}')
            model, num_params = CAMERA_MODELS[model_id]
            cameras[camera_id] = Camera(camera_id, model, width, height, reader.array('f8', num_params).copy())
        return cameras

    return _parse_binary(path, parse)


def read_images_binary(path: str) -> Dict[int, Image]:
    """``images.bin``: per image ``int32 id, float64 q[4], t[3], int32 camera_id, name\\0, uint64 n, (x, y, id)[n]``."""

    def parse(reader):
        images = {}
        for _ in range(reader.read('Q')[0]):
            image_id, *pose, camera_id = reader.read('i7di')
            name = reader.name()
            count = reader.read('Q')[0]
            points = reader.array([('x', 'f8'), ('y', 'f8'), ('id', 'i8')], count)
            images[image_id] = Image(image_id, np.asarray(pose[:4]), np.asarray(pose[4:]), camera_id, name,
                                     np.stack([points['x'], points['y']], axis=1).astype(np.float64),
                                     points['id'].astype(np.int64))
        return images

    return _parse_binary(path, parse)


def read_points3D_binary(path: str) -> Dict[int, Point3D]:
    """``points3D.bin``: ``uint64 id, float64 xyz[3], uint8 rgb[3], float64 error, uint64 n, (int32, int32)[n]``."""

    def parse(reader):
        points = {}
        for _ in range(reader.read('Q')[0]):
            point_id, x, y, z, r, g, b, error, length = reader.read('Q3d3BdQ')
            track = reader.array('i4', 2 * length).reshape(-1, 2).astype(np.int64)
            points[point_id] = Point3D(point_id, np.asarray([x, y, z]), np.asarray([r, g, b], dtype=np.uint8),
                                       error, track[:, 0].copy(), track[:, 1].copy())
        return points

    return _parse_binary(path, parse)


# -- model ----------------------------------------------------------------------------------------------------------
_READERS = {
    '.txt': (read_cameras_text, read_images_text, read_points3D_text),
    '.bin': (read_cameras_binary, read_images_binary, read_points3D_binary),
}


def _require(path: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f'COLMAP model file not found: {path}')


def detect_model_format(path: str) -> str:
    """``'.bin'`` when ``path`` holds a complete binary model, else ``'.txt'`` when it holds a text one.

    Raises:
        FileNotFoundError: naming the files looked for when neither model is complete.
    """
    for ext in ('.bin', '.txt'):
        if all(os.path.isfile(os.path.join(path, name + ext)) for name in MODEL_FILES):
            return ext
    wanted = ', '.join(name + ext for ext in ('.bin', '.txt') for name in MODEL_FILES)
    raise FileNotFoundError(f'No complete COLMAP model in {path} (looked for {wanted}).')


def read_model(path: str, ext: str = 'auto') -> ColmapModel:
    """Read the sparse model in the directory ``path``.

    Args:
        path: Directory with ``cameras``, ``images`` and ``points3D`` files.
        ext: ``'.txt'``, ``'.bin'`` or ``'auto'`` (binary when complete, else text, as COLMAP does).
    """
    if ext == 'auto':
        ext = detect_model_format(path)
    if ext not in _READERS:
        raise ValueError(f"COLMAP model format must be '.txt', '.bin' or 'auto', got {ext!r}.")
    readers = _READERS[ext]
    return ColmapModel(*(reader(os.path.join(path, name + ext)) for reader, name in zip(readers, MODEL_FILES)))
