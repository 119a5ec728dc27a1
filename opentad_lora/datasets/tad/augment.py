"""Photometric and geometric training augmentations of OpenTAD's THUMOS pipeline, one draw per clip.

``ImgAug(transforms='default')`` is mmaction2's RandAugment through imgaug (2 of 15 operations, magnitude 9 of
10); ``ColorJitter`` is mmaction2's own brightness/contrast/saturation/hue jitter. Both draw their random values once
per clip and apply the same operation to every frame of ``imgs`` (``(T, H, W, 3)`` RGB uint8), as mmaction does.
They are written with OpenCV, Pillow (the ``Enhance*``/``Autocontrast``/``Equalize`` operations are PIL's, which
imgaug's ``pillike`` operations reproduce) and numpy; imgaug itself is unmaintained and does not run on numpy 2.

Where ours differs from mmaction2 (see docs/adatad.md): draws come from numpy's global generator (seeded per
dataloader worker by MMEngine) rather than imgaug's, so the same seed gives other, equally distributed values.
"""
from functools import partial
from typing import Callable, List, Sequence, Tuple, Union

import cv2
import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from opentad_lora.registry import TRANSFORMS

Clip = np.ndarray  # (T, H, W, 3) RGB uint8

# mmaction2's RandAugment hyper-parameters (ImgAug.default_transforms): magnitude 9 of 10.
LEVEL = 9 / 10
SHEAR_DEG = 17.19 * LEVEL
TRANSLATE_FRACTION = 0.2 * LEVEL
ROTATE_DEG = 30 * LEVEL
POSTERIZE_BITS = max(1, int(4 * LEVEL))
SOLARIZE_THRESHOLD = 256 * LEVEL
ENHANCE_FACTOR = 1.8 * LEVEL + 0.1
CUTOUT_FRACTION = 0.2 * LEVEL
CUTOUT_FILL = 128  # imgaug Cutout's default cval
NUM_OPS = 2


def _warp(clip: Clip, matrix: np.ndarray) -> Clip:
    """Every frame through the same 2x3 affine map: bilinear, outside filled with 0 (imgaug's Affine defaults)."""
    height, width = clip.shape[1:3]
    return np.stack([cv2.warpAffine(frame, matrix, (width, height), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_CONSTANT, borderValue=0) for frame in clip])


def _centre(clip: Clip) -> Tuple[float, float]:
    """(x, y) of the frame centre in pixel coordinates, as imgaug's Affine places it."""
    return (clip.shape[2] - 1) / 2, (clip.shape[1] - 1) / 2


def shear_x(clip: Clip, degrees: float) -> Clip:
    """Shear along x by ``degrees`` about the frame centre (x' = x + tan(angle) * (y - cy))."""
    slope = np.tan(np.deg2rad(degrees))
    return _warp(clip, np.array([[1, slope, -slope * _centre(clip)[1]], [0, 1, 0]], np.float64))


def shear_y(clip: Clip, degrees: float) -> Clip:
    """Shear along y by ``degrees`` about the frame centre (y' = y + tan(angle) * (x - cx))."""
    slope = np.tan(np.deg2rad(degrees))
    return _warp(clip, np.array([[1, 0, 0], [slope, 1, -slope * _centre(clip)[0]]], np.float64))


def translate(clip: Clip, fraction_x: float, fraction_y: float) -> Clip:
    """Shift by these fractions of the frame width and height."""
    dx, dy = fraction_x * clip.shape[2], fraction_y * clip.shape[1]
    return _warp(clip, np.array([[1, 0, dx], [0, 1, dy]], np.float64))


def rotate(clip: Clip, degrees: float) -> Clip:
    """Rotate by ``degrees`` (counter-clockwise on screen) about the frame centre."""
    return _warp(clip, cv2.getRotationMatrix2D(_centre(clip), degrees, 1.0))


def posterize(clip: Clip, bits: int) -> Clip:
    """Keep the ``bits`` highest bits of every value (PIL's ``ImageOps.posterize``)."""
    return clip & np.uint8((0xFF << (8 - bits)) & 0xFF)


def solarize(clip: Clip, threshold: float) -> Clip:
    """Invert values at or above ``threshold`` (imgaug's ``Solarize``), through a 256-entry lookup table."""
    values = np.arange(256)
    return np.where(values >= threshold, 255 - values, values).astype(np.uint8)[clip]


def invert(clip: Clip) -> Clip:
    """255 - value (imgaug's ``Invert`` with p=1)."""
    return 255 - clip


def per_frame_pil(clip: Clip, op: Callable[[Image.Image], Image.Image]) -> Clip:
    """Apply a Pillow operation to every frame."""
    return np.stack([np.asarray(op(Image.fromarray(frame))) for frame in clip])


def enhance(clip: Clip, kind: type, factor: float) -> Clip:
    """PIL's ``ImageEnhance.<kind>(frame).enhance(factor)`` on every frame."""
    return np.stack([np.asarray(kind(Image.fromarray(frame)).enhance(factor)) for frame in clip])


def cutout(clip: Clip, centre: Tuple[float, float], side_fraction: float, fill: int = CUTOUT_FILL) -> Clip:
    """Fill one square of side ``side_fraction * height`` centred at ``centre`` = (x, y) in [0, 1] of the frame."""
    height, width = clip.shape[1:3]
    half = side_fraction * height / 2
    cx, cy = centre[0] * width, centre[1] * height
    x1, x2 = (int(np.clip(round(v), 0, width)) for v in (cx - half, cx + half))
    y1, y2 = (int(np.clip(round(v), 0, height)) for v in (cy - half, cy + half))
    out = clip.copy()
    out[:, y1:y2, x1:x2] = fill
    return out


def random_cutout(clip: Clip, side_fraction: float) -> Clip:
    """:func:`cutout` at a uniformly random centre, the same for every frame."""
    return cutout(clip, tuple(np.random.uniform(0, 1, size=2)), side_fraction)


@TRANSFORMS.register_module()
class ImgAug:
    """mmaction2's ``ImgAug(transforms='default')``: RandAugment, two of fifteen operations per clip.

    The operations and their magnitudes are mmaction2's (level 0.9): shear x/y 15.47°, translate x/y 18 % of the
    frame, rotate 27°, posterize to 3 bits, solarize above 230.4, PIL colour/contrast/brightness/sharpness
    enhancement by 1.72, autocontrast, equalize, invert, and a cutout square of 18 % of the frame height filled with
    128. Two distinct operations are drawn per clip and applied in that list order to every frame. As in mmaction2,
    the direction (sign) of each shear, translation and rotation is drawn once, when the transform is built.

    Args:
        transforms: Only ``'default'`` (the one mmaction2 preset OpenTAD uses).
    """

    def __init__(self, transforms: Union[str, Sequence[dict]] = 'default') -> None:
        if transforms != 'default':
            raise ValueError(f'ImgAug: only transforms="default" (mmaction2\'s RandAugment) is implemented, got '
                             f'{transforms!r}.')
        names = ('shear_x', 'shear_y', 'translate_x', 'translate_y', 'rotate')
        self.signs = {name: int(np.random.choice([-1, 1])) for name in names}
        sign = self.signs
        self.ops: List[Tuple[str, Callable[[Clip], Clip]]] = [  # partials of module functions: picklable
            ('shear_x', partial(shear_x, degrees=sign['shear_x'] * SHEAR_DEG)),
            ('shear_y', partial(shear_y, degrees=sign['shear_y'] * SHEAR_DEG)),
            ('translate_x', partial(translate, fraction_x=sign['translate_x'] * TRANSLATE_FRACTION, fraction_y=0)),
            ('translate_y', partial(translate, fraction_x=0, fraction_y=sign['translate_y'] * TRANSLATE_FRACTION)),
            ('rotate', partial(rotate, degrees=sign['rotate'] * ROTATE_DEG)),
            ('posterize', partial(posterize, bits=POSTERIZE_BITS)),
            ('solarize', partial(solarize, threshold=SOLARIZE_THRESHOLD)),
            ('color', partial(enhance, kind=ImageEnhance.Color, factor=ENHANCE_FACTOR)),
            ('contrast', partial(enhance, kind=ImageEnhance.Contrast, factor=ENHANCE_FACTOR)),
            ('brightness', partial(enhance, kind=ImageEnhance.Brightness, factor=ENHANCE_FACTOR)),
            ('sharpness', partial(enhance, kind=ImageEnhance.Sharpness, factor=ENHANCE_FACTOR)),
            ('autocontrast', partial(per_frame_pil, op=ImageOps.autocontrast)),  # PIL's default cutoff=0
            ('equalize', partial(per_frame_pil, op=ImageOps.equalize)),
            ('invert', invert),
            ('cutout', partial(random_cutout, side_fraction=CUTOUT_FRACTION)),
        ]

    def sample_ops(self) -> List[int]:
        """Indices of the operations for one clip: ``NUM_OPS`` distinct ones, in list order."""
        return sorted(int(i) for i in np.random.choice(len(self.ops), NUM_OPS, replace=False))

    def __call__(self, results: dict) -> dict:
        clip = np.ascontiguousarray(results['imgs'])
        for index in self.sample_ops():
            clip = self.ops[index][1](clip)
        results['imgs'] = clip
        return results


def _jitter_range(value: Union[float, Tuple[float, float]], bound: float, base: float) -> Tuple[float, float]:
    """``base -/+ value`` (or the given pair), within ``base -/+ bound`` (mmaction2's ``check_input``)."""
    low, high = (value if isinstance(value, (tuple, list)) else (base - value, base + value))
    if not base - bound <= low <= high <= base + bound:
        raise ValueError(f'ColorJitter: range {(low, high)} must lie within [{base - bound}, {base + bound}]')
    return float(low), float(high)


def grayscale(clip: np.ndarray) -> np.ndarray:
    """mmaction2's luma: 0.2989 R + 0.587 G + 0.114 B, on float values."""
    return 0.2989 * clip[..., 0] + 0.587 * clip[..., 1] + 0.114 * clip[..., 2]


def shift_hue(clip: np.ndarray, factor: float) -> np.ndarray:
    """Clip to uint8, add ``int(factor * 255)`` to OpenCV's hue (0..179) modulo 180, back to float RGB."""
    frames = np.clip(clip, 0, 255).astype(np.uint8)
    shape = frames.shape
    hsv = cv2.cvtColor(frames.reshape(-1, shape[-2], 3), cv2.COLOR_RGB2HSV)  # per pixel: frames stacked as rows
    hsv[..., 0] = (hsv[..., 0].astype(np.int32) + int(factor * 255)) % 180
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).reshape(shape).astype(np.float32)


@TRANSFORMS.register_module()
class ColorJitter:
    """mmaction2's ``ColorJitter``: one brightness, contrast, saturation and hue factor per clip.

    Brightness multiplies the values; contrast blends each frame with the mean of its grayscale; saturation blends
    each pixel with its grayscale; hue shifts OpenCV's hue channel by ``int(h * 255)`` modulo 180. The order of the
    four is a permutation drawn once, when the transform is built (as mmaction2 does); values are clipped to
    [0, 255] and truncated to uint8 at the end.

    Args:
        brightness: Factor range ``1 -/+ brightness`` (or a pair within [0, 2]).
        contrast: Factor range ``1 -/+ contrast``.
        saturation: Factor range ``1 -/+ saturation``.
        hue: Shift range ``-/+ hue`` (at most 0.5).
    """

    def __init__(self, brightness: float = 0.5, contrast: float = 0.5, saturation: float = 0.5,
                 hue: float = 0.1) -> None:
        self.brightness = _jitter_range(brightness, 1, 1)
        self.contrast = _jitter_range(contrast, 1, 1)
        self.saturation = _jitter_range(saturation, 1, 1)
        self.hue = _jitter_range(hue, 0.5, 0)
        self.order = [int(i) for i in np.random.permutation(4)]

    def sample(self) -> Tuple[float, float, float, float]:
        """(brightness, contrast, saturation, hue) of one clip, drawn in that order."""
        return tuple(float(np.random.uniform(*r)) for r in (self.brightness, self.contrast, self.saturation,
                                                             self.hue))

    def __call__(self, results: dict) -> dict:
        b, c, s, h = self.sample()
        clip = results['imgs'].astype(np.float32)  # in-place float32 maths below: one copy of the clip
        for op in self.order:
            if op == 0 and b != 1:
                clip *= b
            elif op == 1 and c != 1:
                mean = grayscale(clip).mean(axis=(1, 2))[:, None, None, None]
                clip *= c
                clip += (1 - c) * mean
            elif op == 2 and s != 1:
                gray = grayscale(clip)[..., None]
                clip *= s
                clip += (1 - s) * gray
            elif op == 3 and h != 0:
                clip = shift_hue(clip, h)
        results['imgs'] = np.clip(clip, 0, 255, out=clip).astype(np.uint8)
        return results
