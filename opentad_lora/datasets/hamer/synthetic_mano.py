"""A synthetic hand model in the exact MANO file layout (``MANO_RIGHT.pkl``), for tests and the quickstart.

The real MANO model is licence-restricted and never shipped. This one has MANO's shapes and conventions: 778
vertices, 1538 faces (a single surface open at the wrist, like MANO), 16 joints with MANO's kinematic tree and
joint order (wrist, index, middle, pinky, ring, thumb), fingertip vertices at smplx's MANO tip ids, 10 shape and
135 pose blend shapes, a 45-d PCA pose basis and mean pose. The hand is a palm tube plus five finger tubes (joined
to the palm by short bridges so the surface stays one piece), with rigid skinning blended across each joint.
"""
import pickle
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np

NUM_VERTS, NUM_FACES, NUM_JOINTS = 778, 1538, 16
PARENTS = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14)
TIP_VERTEX_IDS = {'thumb': 744, 'index': 320, 'middle': 443, 'ring': 554, 'pinky': 671}
#: finger -> (its three MANO joints, base point, direction, segment lengths, ring radius at base)
_FINGERS = {
    'index': ((1, 2, 3), (0.090, 0.026, 0.0), (1.0, 0.06, 0.0), (0.040, 0.025, 0.020), 0.0085),
    'middle': ((4, 5, 6), (0.093, 0.008, 0.0), (1.0, 0.0, 0.0), (0.045, 0.028, 0.022), 0.0090),
    'pinky': ((7, 8, 9), (0.082, -0.030, 0.0), (1.0, -0.10, 0.0), (0.030, 0.020, 0.018), 0.0075),
    'ring': ((10, 11, 12), (0.088, -0.011, 0.0), (1.0, -0.05, 0.0), (0.042, 0.027, 0.021), 0.0085),
    'thumb': ((13, 14, 15), (0.022, 0.028, -0.006), (0.55, 0.80, -0.25), (0.038, 0.032, 0.026), 0.0105),
}
_FINGER_RING, _FINGER_RINGS = 8, 16
_RINGS_PER_SEGMENT = (2, 5, 4, 5)  # base (inside the palm), proximal, middle, distal: 16 rings
_PALM_RING, _PALM_RINGS = 16, 8


def _ring(center: np.ndarray, u: np.ndarray, v: np.ndarray, radii: Tuple[float, float], count: int) -> np.ndarray:
    angles = 2 * np.pi * np.arange(count) / count
    return center + radii[0] * np.cos(angles)[:, None] * u + radii[1] * np.sin(angles)[:, None] * v


def _tube_faces(first: int, rings: int, count: int) -> List[Tuple[int, int, int]]:
    faces = []
    for r in range(rings - 1):
        for k in range(count):
            a, b = first + r * count + k, first + r * count + (k + 1) % count
            c, d = a + count, b + count
            faces += [(a, b, d), (a, d, c)]
    return faces


def _strip_faces(outer: Sequence[int], inner: Sequence[int]) -> List[Tuple[int, int, int]]:
    """Triangulate the band between two closed rings (any sizes) by walking both in step."""
    faces, i, j = [], 0, 0
    n, m = len(outer), len(inner)
    while i < n or j < m:
        if j >= m or (i < n and (i + 1) / n <= (j + 1) / m):
            faces.append((outer[i % n], outer[(i + 1) % n], inner[j % m]))
            i += 1
        else:
            faces.append((outer[i % n], inner[(j + 1) % m], inner[j % m]))
            j += 1
    return faces


def _polygon_faces(ring: Sequence[int]) -> List[Tuple[int, int, int]]:
    """Triangulate a convex ring without an interior vertex (zig-zag)."""
    lo, hi, faces, flip = 0, len(ring) - 1, [], False
    while hi - lo >= 2:
        if flip:
            faces.append((ring[lo], ring[hi - 1], ring[hi]))
            hi -= 1
        else:
            faces.append((ring[lo], ring[lo + 1], ring[hi]))
            lo += 1
        flip = not flip
    return faces


def _build_surface() -> Dict[str, np.ndarray]:
    """Vertices, faces, skinning weights, joint regressor and tips of the hand in its rest pose (metres)."""
    verts: List[np.ndarray] = []
    faces: List[Tuple[int, int, int]] = []
    weights = np.zeros((NUM_VERTS, NUM_JOINTS))
    regressor = np.zeros((NUM_JOINTS, NUM_VERTS))
    up = np.array([0.0, 0.0, 1.0])
    # Palm: elliptic tube along +x from the wrist (open) to the knuckles, capped by a 4-ring and a centre vertex.
    for r in range(_PALM_RINGS):
        t = r / (_PALM_RINGS - 1)
        width = 0.028 + 0.018 * min(1.0, 2 * t)
        verts.append(_ring(np.array([0.095 * t, 0.0, 0.0]), np.array([0.0, 1.0, 0.0]), up, (width, 0.014),
                           _PALM_RING))
    faces += _tube_faces(0, _PALM_RINGS, _PALM_RING)
    top = (_PALM_RINGS - 1) * _PALM_RING
    verts.append(_ring(np.array([0.099, 0.0, 0.0]), np.array([0.0, 1.0, 0.0]), up, (0.030, 0.008), 4))
    verts.append(np.array([[0.100, 0.0, 0.0]]))
    inner = list(range(top + _PALM_RING, top + _PALM_RING + 4))
    faces += _strip_faces(list(range(top, top + _PALM_RING)), inner)
    faces += [(inner[k], inner[(k + 1) % 4], top + _PALM_RING + 4) for k in range(4)]
    palm_count = top + _PALM_RING + 5
    weights[:palm_count, 0] = 1.0
    regressor[0, :_PALM_RING] = 1.0 / _PALM_RING  # the wrist joint is the centre of the wrist ring
    palm_faces = len(faces)
    tips, bridges = {}, []
    start = palm_count
    for name, (joints, base, direction, lengths, radius) in _FINGERS.items():
        direction = np.asarray(direction) / np.linalg.norm(direction)
        u = np.cross(up, direction)
        u /= np.linalg.norm(u)
        v = np.cross(direction, u)
        knots = [np.asarray(base) - 0.012 * direction, np.asarray(base)]
        for length in lengths:
            knots.append(knots[-1] + length * direction)
        rings, owners, ring_id = [], [], 0
        for seg, count in enumerate(_RINGS_PER_SEGMENT):
            end = knots[seg + 1] if seg < 3 else knots[seg] + 0.85 * (knots[seg + 1] - knots[seg])
            for k in range(count):
                center = knots[seg] + (end - knots[seg]) * k / count
                scale = radius * (1.0 - 0.25 * ring_id / _FINGER_RINGS)
                rings.append(_ring(center, u, v, (scale, 0.85 * scale), _FINGER_RING))
                owners.append(joints[max(seg - 1, 0)] if seg > 0 else 0)
                if k == 0 and seg > 0:  # MCP / PIP / DIP rings: their centres are the joints
                    regressor[joints[seg - 1], start + ring_id * _FINGER_RING:
                              start + (ring_id + 1) * _FINGER_RING] = 1.0 / _FINGER_RING
                ring_id += 1
        verts += rings
        verts.append(knots[4][None])
        tip = start + _FINGER_RINGS * _FINGER_RING
        tips[name] = tip
        faces += _tube_faces(start, _FINGER_RINGS, _FINGER_RING)
        last = list(range(tip - _FINGER_RING, tip))
        faces += [(last[k], last[(k + 1) % _FINGER_RING], tip) for k in range(_FINGER_RING)]
        base_faces = _polygon_faces(list(range(start + _FINGER_RING - 1, start - 1, -1)))
        bridges.append((len(faces) + len(base_faces) // 2, start))
        faces += base_faces
        for ring_id, owner in enumerate(owners):
            rows = slice(start + ring_id * _FINGER_RING, start + (ring_id + 1) * _FINGER_RING)
            weights[rows, owner] = 1.0
        weights[tip, joints[2]] = 1.0
        start = tip + 1
    verts = np.concatenate(verts)
    faces = np.asarray(faces)
    faces = _add_bridges(verts, faces, palm_faces, [b[0] for b in bridges])
    return dict(v_template=verts, faces=faces, weights=_smooth_weights(verts, weights), J_regressor=regressor,
                tips=tips)


def _add_bridges(verts: np.ndarray, faces: np.ndarray, palm_faces: int, finger_faces: List[int]) -> np.ndarray:
    """Join each finger to the palm: remove a finger-base face and the nearest free palm face, add a prism."""
    centroids = verts[faces].mean(1)
    used, removed, added = set(), set(), []
    for face_id in finger_faces:
        dist = np.linalg.norm(centroids[:palm_faces] - centroids[face_id], axis=1)
        palm_id = next(int(i) for i in np.argsort(dist) if int(i) not in used)
        used.add(palm_id)
        removed |= {palm_id, face_id}
        (a, b, c), (d, e, f) = faces[palm_id], faces[face_id][::-1]
        for p, q, r, s in ((a, b, e, d), (b, c, f, e), (c, a, d, f)):
            added += [(p, q, r), (p, r, s)]
    keep = [face for i, face in enumerate(faces) if i not in removed]
    return np.asarray(keep + added, dtype=np.int64)


def _smooth_weights(verts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Blend each finger vertex's weight with its neighbours along the finger (soft skinning at the joints)."""
    smooth = weights.copy()
    ring = _FINGER_RING
    start = weights.shape[0] - 5 * (_FINGER_RINGS * ring + 1)
    for finger in range(5):
        first = start + finger * (_FINGER_RINGS * ring + 1)
        per_ring = weights[first:first + _FINGER_RINGS * ring:ring]
        blended = per_ring.copy()
        blended[1:-1] = 0.5 * per_ring[1:-1] + 0.25 * (per_ring[:-2] + per_ring[2:])
        smooth[first:first + _FINGER_RINGS * ring] = np.repeat(blended, ring, axis=0)
    return smooth / smooth.sum(1, keepdims=True)


def _move_tips(surface: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Reorder vertices so the fingertips sit at MANO's tip ids (faces, weights and regressor follow)."""
    order = list(range(NUM_VERTS))
    for name, target in TIP_VERTEX_IDS.items():
        i = order.index(surface['tips'][name])
        order[i], order[target] = order[target], order[i]
    order = np.asarray(order)
    new_of_old = np.empty_like(order)
    new_of_old[order] = np.arange(NUM_VERTS)
    return dict(v_template=surface['v_template'][order], faces=new_of_old[surface['faces']],
                weights=surface['weights'][order], J_regressor=surface['J_regressor'][:, order])


def build_synthetic_mano(seed: int = 0) -> Dict[str, object]:
    """All arrays of a MANO-format model (the keys and shapes of ``MANO_RIGHT.pkl``)."""
    rng = np.random.default_rng(seed)
    surface = _move_tips(_build_surface())
    verts = surface['v_template']
    if verts.shape != (NUM_VERTS, 3) or surface['faces'].shape != (NUM_FACES, 3):
        raise AssertionError(f'synthetic hand has {verts.shape[0]} vertices / {surface["faces"].shape[0]} faces')
    joints = surface['J_regressor'] @ verts
    centred = verts - joints[0]
    shapedirs = np.zeros((NUM_VERTS, 3, 10))
    shapedirs[:, :, 0] = 0.06 * centred                         # overall size
    shapedirs[:, :, 1] = 0.08 * centred * [1.0, 0.0, 0.0]       # length
    shapedirs[:, :, 2] = 0.10 * centred * [0.0, 1.0, 0.0]       # width
    shapedirs[:, :, 3] = 0.15 * centred * [0.0, 0.0, 1.0]       # thickness
    for k in range(4, 10):                                      # smooth random bumps
        freq = rng.normal(size=3) * 30
        shapedirs[:, :, k] = 0.002 * np.sin(verts @ freq + rng.uniform(0, 2 * np.pi))[:, None] * rng.normal(size=3)
    posedirs = np.zeros((NUM_VERTS, 3, 9 * (NUM_JOINTS - 1)))
    for j in range(1, NUM_JOINTS):  # smooth correctives: vertices a joint moves bulge away from it as it bends
        bulge = surface['weights'][:, j, None] * (verts - joints[j])
        posedirs[:, :, 9 * (j - 1):9 * j] = 0.05 * bulge[:, :, None] * rng.normal(size=9)
    components = np.linalg.qr(rng.normal(size=(45, 45)))[0].T
    kintree = np.array([[2 ** 32 - 1 if p < 0 else p for p in PARENTS], list(range(NUM_JOINTS))], dtype=np.int64)
    return dict(v_template=verts, shapedirs=shapedirs, posedirs=posedirs, J_regressor=surface['J_regressor'],
                weights=surface['weights'], kintree_table=kintree, f=surface['faces'].astype(np.uint32),
                hands_components=components, hands_mean=0.1 * rng.normal(size=45),
                hands_coeffs=rng.normal(size=(1554, 45)) * 0.5, J=joints, bs_style='lbs', bs_type='lrotmin')


def write_synthetic_mano(path: Union[str, Path], seed: int = 0) -> Path:
    """Write :func:`build_synthetic_mano` as a MANO-format pickle (protocol 2, like the official Python-2 file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open('wb') as handle:
        pickle.dump(build_synthetic_mano(seed), handle, protocol=2)
    return path
