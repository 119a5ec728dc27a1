"""Read and write the real file formats of CAD data: point clouds (``.npy``, ``.ply``) and meshes (``.stl``, ``.ply``,
``.npz``), in plain numpy. Every reader names the file in its error message.
"""
import struct
from pathlib import Path
from typing import Dict, List, Tuple, Union

import numpy as np

PathLike = Union[str, Path]
_PLY_TYPES = {'char': 'i1', 'int8': 'i1', 'uchar': 'u1', 'uint8': 'u1', 'short': 'i2', 'int16': 'i2',
              'ushort': 'u2', 'uint16': 'u2', 'int': 'i4', 'int32': 'i4', 'uint': 'u4', 'uint32': 'u4',
              'float': 'f4', 'float32': 'f4', 'double': 'f8', 'float64': 'f8'}
NORMAL_PROPS = ('nx', 'ny', 'nz')


def _check_points(points: np.ndarray, path: PathLike, normals: bool = False) -> np.ndarray:
    points = np.asarray(points)
    columns = 6 if normals else 3
    if points.ndim != 2 or points.shape[1] < 3 or len(points) == 0 or not np.isfinite(points[:, :3]).all():
        raise ValueError(f'Point cloud {path} must be a finite (N, 3+) array, got shape {points.shape}.')
    if normals and (points.shape[1] < 6 or not np.isfinite(points[:, 3:6]).all()):
        raise ValueError(f'Point cloud {path} has no finite normals (columns 3-5 of an (N, 6) array, or nx/ny/nz '
                         f'PLY properties; shape {points.shape}): CAD-Recode v1 models need xyz + normals.')
    return points[:, :columns].astype(np.float32)


def _parse_ply_header(handle) -> Tuple[str, List[Tuple[str, int, list]]]:
    """``(format, [(element, count, [(property, dtype) or (list property, count dtype, item dtype)])])``."""
    if handle.readline().strip() != b'ply':
        raise ValueError('missing "ply" magic')
    fmt, elements = None, []
    while True:
        line = handle.readline()
        if not line:
            raise ValueError('header has no end_header')
        words = line.decode('ascii', errors='replace').split()
        if not words or words[0] in ('comment', 'obj_info'):
            continue
        if words[0] == 'format':
            fmt = words[1]
        elif words[0] == 'element':
            elements.append((words[1], int(words[2]), []))
        elif words[0] == 'property' and words[1] == 'list':
            elements[-1][2].append((words[4], _PLY_TYPES[words[2]], _PLY_TYPES[words[3]]))
        elif words[0] == 'property':
            elements[-1][2].append((words[2], _PLY_TYPES[words[1]]))
        elif words[0] == 'end_header':
            return fmt, elements


def _read_ply(path: PathLike) -> Dict[str, np.ndarray]:
    """Vertices ``(N, 3)`` and, when present, triangle faces ``(F, 3)`` of an ASCII or binary PLY file."""
    with open(path, 'rb') as handle:
        fmt, elements = _parse_ply_header(handle)
        if fmt not in ('ascii', 'binary_little_endian', 'binary_big_endian'):
            raise ValueError(f'unsupported format {fmt!r}')
        endian = '>' if fmt == 'binary_big_endian' else '<'
        body = handle.read()
    tokens = body.split() if fmt == 'ascii' else None
    offset, out = 0, {}
    for name, count, props in elements:
        if any(len(p) == 3 for p in props):  # list properties (faces): read row by row
            rows = []
            for _ in range(count):
                row = []
                for prop in props:
                    if len(prop) == 3:
                        if tokens is not None:
                            n = int(tokens[offset])
                            row.append([float(t) for t in tokens[offset + 1:offset + 1 + n]])
                            offset += 1 + n
                        else:
                            cnt_dt, item_dt = np.dtype(endian + prop[1]), np.dtype(endian + prop[2])
                            n = int(np.frombuffer(body, cnt_dt, 1, offset)[0])
                            row.append(np.frombuffer(body, item_dt, n, offset + cnt_dt.itemsize).tolist())
                            offset += cnt_dt.itemsize + n * item_dt.itemsize
                    else:
                        offset += 1 if tokens is not None else np.dtype(prop[1]).itemsize
                rows.append(row[0])
            out[name] = rows
        elif tokens is not None:
            values = np.array(tokens[offset:offset + count * len(props)], dtype=np.float64)
            out[name] = values.reshape(count, len(props))
            offset += count * len(props)
        else:
            dtype = np.dtype([(p[0], endian + p[1]) for p in props])
            table = np.frombuffer(body, dtype, count, offset)
            offset += count * dtype.itemsize
            out[name] = np.stack([table[p[0]].astype(np.float64) for p in props], 1)
        out[f'{name}_props'] = [p[0] for p in props]
    if 'vertex' not in out:
        raise ValueError('no vertex element')
    props = out['vertex_props']
    vertices = out['vertex'][:, [props.index(axis) for axis in 'xyz']]
    result = {'vertices': vertices}
    if all(name in props for name in NORMAL_PROPS):
        result['normals'] = out['vertex'][:, [props.index(name) for name in NORMAL_PROPS]]
    if out.get('face'):
        faces = [f for f in out['face'] if len(f) >= 3]
        result['faces'] = np.array([[f[0], f[i], f[i + 1]] for f in faces for i in range(1, len(f) - 1)],
                                   dtype=np.int64).reshape(-1, 3)
    return result


def read_points(path: PathLike, normals: bool = False) -> np.ndarray:
    """A point cloud from ``.npy`` or ``.ply``: ``(N, 3)`` float32 xyz, or ``(N, 6)`` xyz + normals with ``normals``
    (columns 3-5 of an ``.npy``, the ``nx``/``ny``/``nz`` properties of a PLY; an error when absent). Other extra
    columns are dropped."""
    path = Path(path)
    try:
        if path.suffix == '.npy':
            return _check_points(np.load(path, allow_pickle=False), path, normals)
        if path.suffix == '.ply':
            ply = _read_ply(path)
            columns = [ply['vertices']] + ([ply['normals']] if 'normals' in ply else [])
            return _check_points(np.concatenate(columns, axis=1), path, normals)
    except (OSError, ValueError, KeyError, IndexError, struct.error) as err:
        raise ValueError(f'Cannot read point cloud {path}: {err}') from None
    raise ValueError(f'Unsupported point cloud file {path}: use .npy or .ply.')


def write_points(path: PathLike, points: np.ndarray) -> Path:
    """Write ``(N, 3)`` points, or ``(N, 6)`` points + normals, as ``.npy`` or binary little-endian ``.ply`` (by
    the suffix of ``path``; PLY normals are the ``nx``/``ny``/``nz`` vertex properties)."""
    path = Path(path)
    points = np.ascontiguousarray(points, dtype=np.float32)
    if points.ndim != 2 or points.shape[1] not in (3, 6):
        raise ValueError(f'Points for {path} must be (N, 3) or (N, 6), got shape {points.shape}.')
    if path.suffix == '.npy':
        np.save(path, points)
    elif path.suffix == '.ply':
        names = ('x', 'y', 'z') + (NORMAL_PROPS if points.shape[1] == 6 else ())
        header = (f'ply\nformat binary_little_endian 1.0\nelement vertex {len(points)}\n'
                  + ''.join(f'property float {name}\n' for name in names) + 'end_header\n')
        path.write_bytes(header.encode('ascii') + points.astype('<f4').tobytes())
    else:
        raise ValueError(f'Unsupported point cloud file {path}: use .npy or .ply.')
    return path


def _read_stl(path: PathLike) -> Dict[str, np.ndarray]:
    data = Path(path).read_bytes()
    if len(data) >= 84:
        count = struct.unpack('<I', data[80:84])[0]
        if len(data) == 84 + 50 * count:  # binary: 80-byte header, count, then 50-byte records
            records = np.frombuffer(data, np.dtype([('n', '<f4', 3), ('v', '<f4', (3, 3)), ('a', '<u2')]), count, 84)
            corners = records['v'].reshape(-1, 3).astype(np.float64)
            return {'vertices': corners, 'faces': np.arange(len(corners)).reshape(-1, 3)}
    lines = [line.split() for line in data.decode('ascii', errors='replace').splitlines()]
    corners = np.array([[float(v) for v in words[1:4]] for words in lines if words and words[0] == 'vertex'])
    if len(corners) == 0 or len(corners) % 3:
        raise ValueError('neither a binary STL nor an ASCII STL with whole facets')
    return {'vertices': corners, 'faces': np.arange(len(corners)).reshape(-1, 3)}


def read_mesh(path: PathLike) -> Tuple[np.ndarray, np.ndarray]:
    """A triangle mesh ``(vertices (V, 3) float64, faces (F, 3) int64)`` from ``.stl``, ``.ply`` or ``.npz``
    (keys ``vertices`` and ``faces``)."""
    path = Path(path)
    readers = {'.stl': _read_stl, '.ply': _read_ply,
               '.npz': lambda p: dict(np.load(p, allow_pickle=False))}
    if path.suffix not in readers:
        raise ValueError(f'Unsupported mesh file {path}: use .stl, .ply or .npz.')
    try:
        mesh = readers[path.suffix](path)
        vertices, faces = np.asarray(mesh['vertices'], np.float64), np.asarray(mesh['faces'], np.int64)
    except (OSError, ValueError, KeyError, IndexError, struct.error) as err:
        raise ValueError(f'Cannot read mesh {path}: {err}') from None
    if vertices.ndim != 2 or vertices.shape[1] != 3 or faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0 \
            or faces.min() < 0 or faces.max() >= len(vertices):
        raise ValueError(f'Mesh {path} has malformed vertices {vertices.shape} or faces {faces.shape}.')
    return vertices, faces


def write_mesh(path: PathLike, vertices: np.ndarray, faces: np.ndarray) -> Path:
    """Write a triangle mesh as binary ``.stl`` or ``.npz`` (by the suffix of ``path``)."""
    path = Path(path)
    vertices, faces = np.asarray(vertices, np.float64), np.asarray(faces, np.int64)
    if path.suffix == '.npz':
        np.savez(path, vertices=vertices, faces=faces)
    elif path.suffix == '.stl':
        tri = vertices[faces]
        normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-30)
        records = np.zeros(len(faces), np.dtype([('n', '<f4', 3), ('v', '<f4', (3, 3)), ('a', '<u2')]))
        records['n'], records['v'] = normals, tri
        path.write_bytes(b'\0' * 80 + struct.pack('<I', len(faces)) + records.tobytes())
    else:
        raise ValueError(f'Unsupported mesh file {path}: use .stl or .npz.')
    return path
