"""Parametric CAD solids with their CadQuery programs and analytic surface samples (no CadQuery needed).

Every solid is centred on its bounding box and its largest extent is exactly 200 code units, as in CAD-Recode v1.5
(integer coordinates in ``[-100, 100]``), so the point cloud fitted to ``[-1, 1]`` equals the code's geometry / 100.
Surfaces are described as planar patches (unions of rectangles minus circular holes, disks, annuli) and cylinder
walls, and sampled uniformly by area, so the points match what CadQuery's tessellation of the program would give.
"""
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .io import write_points
from opentad_lora.models.cad.tokenization import train_code_tokenizer

CODE_HEADER = 'import cadquery as cq\n'
EXTENT = 200  # largest extent of every solid, in code units
_Z = np.array([0.0, 0.0, 1.0])


@dataclass
class PlanarPatch:
    """A flat face: ``origin + u * e1 + v * e2`` for ``(u, v)`` in the union of ``rects`` minus the ``holes``.

    ``rects`` are disjoint ``(u0, v0, u1, v1)``; ``holes`` are ``(u, v, radius)`` disks lying inside the rects;
    ``radial`` ``(r_outer, r_inner)`` describes a disk or annulus centred at ``origin`` instead of rects.
    """

    origin: np.ndarray
    e1: np.ndarray
    e2: np.ndarray
    rects: List[Tuple[float, float, float, float]] = field(default_factory=list)
    holes: List[Tuple[float, float, float]] = field(default_factory=list)
    radial: Tuple[float, float] = (0.0, 0.0)

    @property
    def area(self) -> float:
        r_out, r_in = self.radial
        rects = sum((u1 - u0) * (v1 - v0) for u0, v0, u1, v1 in self.rects)
        return rects + np.pi * (r_out ** 2 - r_in ** 2) - sum(np.pi * r ** 2 for _, _, r in self.holes)

    def _sample_uv(self, n: int, rng: np.random.Generator) -> np.ndarray:
        r_out, r_in = self.radial
        if r_out > 0:
            radius = np.sqrt(r_in ** 2 + rng.random(n) * (r_out ** 2 - r_in ** 2))
            angle = rng.random(n) * 2 * np.pi
            return np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1)
        rects = np.asarray(self.rects, dtype=np.float64)
        areas = (rects[:, 2] - rects[:, 0]) * (rects[:, 3] - rects[:, 1])
        which = rng.choice(len(rects), size=n, p=areas / areas.sum())
        low, high = rects[which, :2], rects[which, 2:]
        return low + rng.random((n, 2)) * (high - low)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` points uniform on the face (rejection sampling for the holes)."""
        out = np.empty((0, 2))
        while len(out) < n:
            uv = self._sample_uv(2 * (n - len(out)) + 16, rng)
            for hu, hv, hr in self.holes:
                uv = uv[(uv[:, 0] - hu) ** 2 + (uv[:, 1] - hv) ** 2 > hr ** 2]
            out = np.concatenate([out, uv])
        uv = out[:n]
        return self.origin + uv[:, :1] * self.e1 + uv[:, 1:] * self.e2


@dataclass
class CylinderWall:
    """The side of a cylinder of ``radius`` around the Z axis through ``(cx, cy)``, for ``z0 <= z <= z1``."""

    cx: float
    cy: float
    radius: float
    z0: float
    z1: float

    @property
    def area(self) -> float:
        return 2 * np.pi * self.radius * (self.z1 - self.z0)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        angle = rng.random(n) * 2 * np.pi
        z = self.z0 + rng.random(n) * (self.z1 - self.z0)
        return np.stack([self.cx + self.radius * np.cos(angle), self.cy + self.radius * np.sin(angle), z], 1)


@dataclass
class SyntheticShape:
    """A solid: its family name, its CadQuery program (final solid in ``r``) and its boundary patches."""

    kind: str
    code: str
    patches: list

    @property
    def area(self) -> float:
        return float(sum(p.area for p in self.patches))

    def sample_surface(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` points uniform on the boundary, ``(n, 3)`` float32, in code units."""
        areas = np.array([p.area for p in self.patches])
        counts = rng.multinomial(n, areas / areas.sum())
        points = [p.sample(int(c), rng) for p, c in zip(self.patches, counts) if c > 0]
        return np.concatenate(points).astype(np.float32)


def _vec(x: float, y: float, z: float) -> np.ndarray:
    return np.array([x, y, z], dtype=np.float64)


def _prism_patches(outline: Sequence[Tuple[float, float]], rects: List[Tuple[float, float, float, float]],
                   z0: float, z1: float, holes: Sequence[Tuple[float, float, float]] = ()) -> list:
    """Boundary of the extrusion of a rectilinear outline (given as disjoint rects) with vertical round holes."""
    patches = [PlanarPatch(_vec(0, 0, z), _vec(1, 0, 0), _vec(0, 1, 0), list(rects), list(holes))
               for z in (z0, z1)]
    for (x0, y0), (x1, y1) in zip(outline, list(outline[1:]) + [outline[0]]):
        length = float(np.hypot(x1 - x0, y1 - y0))
        direction = _vec((x1 - x0) / length, (y1 - y0) / length, 0)
        patches.append(PlanarPatch(_vec(x0, y0, z0), direction, _Z, [(0.0, 0.0, length, z1 - z0)]))
    patches += [CylinderWall(u, v, r, z0, z1) for u, v, r in holes]
    return patches


def _box_patches(a: float, b: float, c: float, holes: Sequence[Tuple[float, float, float]] = ()) -> list:
    outline = [(-a / 2, -b / 2), (a / 2, -b / 2), (a / 2, b / 2), (-a / 2, b / 2)]
    return _prism_patches(outline, [(-a / 2, -b / 2, a / 2, b / 2)], -c / 2, c / 2, holes)


def _even(rng: np.random.Generator, low: int, high: int) -> int:
    """A random even integer in ``[low, high]``."""
    return 2 * int(rng.integers(low // 2, high // 2 + 1))


def make_box(rng: np.random.Generator) -> SyntheticShape:
    dims = [EXTENT, _even(rng, 40, EXTENT), _even(rng, 40, EXTENT)]
    a, b, c = rng.permutation(dims).tolist()
    return SyntheticShape('box', f"r = cq.Workplane('XY').box({a}, {b}, {c})\n", _box_patches(a, b, c))


def make_cylinder(rng: np.random.Generator) -> SyntheticShape:
    if rng.random() < 0.5:
        radius, height = EXTENT // 2, _even(rng, 20, EXTENT)
    else:
        radius, height = int(rng.integers(20, EXTENT // 2 + 1)), EXTENT
    z = height / 2
    patches = [PlanarPatch(_vec(0, 0, s * z), _vec(1, 0, 0), _vec(0, 1, 0), radial=(radius, 0.0)) for s in (-1, 1)]
    patches.append(CylinderWall(0.0, 0.0, radius, -z, z))
    return SyntheticShape('cylinder', f"r = cq.Workplane('XY').cylinder({height}, {radius})\n", patches)


def make_box_hole(rng: np.random.Generator) -> SyntheticShape:
    a, b, c = EXTENT, _even(rng, 80, EXTENT), _even(rng, 20, 120)
    d = _even(rng, 20, min(a, b) - 40)
    code = f"r = cq.Workplane('XY').box({a}, {b}, {c}).faces('>Z').workplane().hole({d})\n"
    return SyntheticShape('box_hole', code, _box_patches(a, b, c, [(0.0, 0.0, d / 2)]))


def make_plate_holes(rng: np.random.Generator) -> SyntheticShape:
    a, b, c = EXTENT, _even(rng, 100, EXTENT), _even(rng, 10, 40)
    d = _even(rng, 10, 30)
    x = int(rng.integers(d // 2 + 10, a // 2 - d // 2 - 10 + 1))
    y = int(rng.integers(0, b // 2 - d // 2 - 10 + 1))
    code = (f"r = cq.Workplane('XY').box({a}, {b}, {c}).faces('>Z').workplane()"
            f'.pushPoints([({-x}, {-y}), ({x}, {y})]).hole({d})\n')
    return SyntheticShape('plate_holes', code, _box_patches(a, b, c, [(-x, -y, d / 2), (x, y, d / 2)]))


def make_tube(rng: np.random.Generator) -> SyntheticShape:
    if rng.random() < 0.5:
        outer, height = EXTENT // 2, _even(rng, 20, EXTENT)
    else:
        outer, height = int(rng.integers(40, EXTENT // 2 + 1)), EXTENT
    inner = int(rng.integers(10, outer - 10 + 1))
    z = height // 2
    patches = [PlanarPatch(_vec(0, 0, s * z), _vec(1, 0, 0), _vec(0, 1, 0), radial=(outer, inner)) for s in (-1, 1)]
    patches += [CylinderWall(0.0, 0.0, outer, -z, z), CylinderWall(0.0, 0.0, inner, -z, z)]
    code = f"r = cq.Workplane('XY', origin=(0, 0, {-z})).circle({outer}).circle({inner}).extrude({height})\n"
    return SyntheticShape('tube', code, patches)


def make_l_extrusion(rng: np.random.Generator) -> SyntheticShape:
    half, b, h = EXTENT // 2, _even(rng, 80, EXTENT), _even(rng, 20, EXTENT)
    t, s = int(rng.integers(20, b - 20 + 1)), int(rng.integers(20, EXTENT - 40 + 1))
    y0, y1 = -b // 2, b // 2
    outline = [(-half, y0), (half, y0), (half, y0 + t), (-half + s, y0 + t), (-half + s, y1), (-half, y1)]
    rects = [(-half, y0, half, y0 + t), (-half, y0 + t, -half + s, y1)]
    points = ', '.join(f'({x}, {y})' for x, y in outline)
    code = f"r = cq.Workplane('XY', origin=(0, 0, {-h // 2})).polyline([{points}]).close().extrude({h})\n"
    return SyntheticShape('l_extrusion', code, _prism_patches(outline, rects, -h / 2, h / 2))


SHAPE_MAKERS: Dict[str, Callable[[np.random.Generator], SyntheticShape]] = {
    'box': make_box, 'cylinder': make_cylinder, 'box_hole': make_box_hole, 'plate_holes': make_plate_holes,
    'tube': make_tube, 'l_extrusion': make_l_extrusion}


def random_shape(rng: np.random.Generator, kinds: Sequence[str] = tuple(SHAPE_MAKERS)) -> SyntheticShape:
    """A random solid of one of ``kinds``, whose program starts with ``import cadquery as cq``."""
    unknown = sorted(set(kinds) - set(SHAPE_MAKERS))
    if unknown:
        raise ValueError(f'Unknown synthetic CAD shapes {unknown}; choose from {sorted(SHAPE_MAKERS)}.')
    shape = SHAPE_MAKERS[kinds[int(rng.integers(len(kinds)))]](rng)
    shape.code = CODE_HEADER + shape.code
    return shape


def write_synthetic_dataset(out_dir: Union[str, Path], splits: Mapping[str, int], seed: int = 0,
                            num_surface_points: int = 8192, point_format: str = 'npy',
                            kinds: Sequence[str] = tuple(SHAPE_MAKERS), tokenizer_vocab: Optional[int] = 512) -> Path:
    """Write a CAD-Recode style dataset of random solids in the real formats.

    Layout: ``<split>/points/<i>.npy|.ply`` (surface samples in code units), ``<split>/code/<i>.py`` (the
    CadQuery program), ``<split>.json`` (annotation file for ``CADRecodeDataset``) and, unless
    ``tokenizer_vocab`` is None, ``tokenizer/`` (a byte-level BPE trained on the training programs; needs the
    ``llm`` extra). Programs are unique within the dataset.
    """
    if point_format not in ('npy', 'ply'):
        raise ValueError(f'point_format must be "npy" or "ply", got {point_format!r}.')
    out_dir = Path(out_dir)
    rng, seen, programs = np.random.default_rng(seed), set(), {}
    for split, count in splits.items():
        (out_dir / split / 'points').mkdir(parents=True, exist_ok=True)
        (out_dir / split / 'code').mkdir(parents=True, exist_ok=True)
        data_list, programs[split] = [], []
        while len(data_list) < count:
            shape = random_shape(rng, kinds)
            if shape.code in seen:
                continue
            seen.add(shape.code)
            stem = f'{len(data_list):05d}'
            points_path = f'{split}/points/{stem}.{point_format}'
            write_points(out_dir / points_path, shape.sample_surface(num_surface_points, rng))
            (out_dir / split / 'code' / f'{stem}.py').write_text(shape.code, encoding='utf-8')
            data_list.append(dict(points_path=points_path, code_path=f'{split}/code/{stem}.py', kind=shape.kind))
            programs[split].append(shape.code)
        annotation = dict(metainfo=dict(dataset='synthetic_cad', kinds=list(kinds)), data_list=data_list)
        (out_dir / f'{split}.json').write_text(json.dumps(annotation, indent=1))
    if tokenizer_vocab is not None:
        corpus = programs.get('train') or [code for codes in programs.values() for code in codes]
        train_code_tokenizer(corpus, out_dir / 'tokenizer', tokenizer_vocab)
    return out_dir
