"""Photometric and geometric training augmentations of OpenTAD's THUMOS pipeline, one draw per clip.

``ImgAug(transforms='default')`` is mmaction2's RandAugment through imgaug (2 of 15 operations, magnitude 9 of
10); ``ColorJitter`` is mmaction2's own brightness/contrast/saturation/hue jitter. Both draw their random values once
per clip and apply the same operation to every frame of ``imgs`` (``(T, H, W, 3)`` RGB uint8), as mmaction does.
They are written with OpenCV, Pillow (the ``Enhance*``/``Autocontrast``/``Equalize`` operations are PIL's, which
imgaug's ``pillike`` operations reproduce) and numpy; imgaug itself is unmaintained and does not run on numpy 2.

Speed without changing a value: each operation works on the whole clip or on blocks of frames (lookup tables through
``cv2.LUT``, per-frame tables from per-frame histograms, Pillow on frames stacked into one image where its maths is
per pixel, one output array) and gives bit-identical values to the frame-by-frame formulas
(``tests/test_datasets/test_tad/test_pipeline_exactness.py``), drawing the same random numbers in the same order.

Where ours differs from mmaction2 (see docs/adatad.md): draws come from numpy's global generator (seeded per
dataloader worker by MMEngine) rather than imgaug's, so the same seed gives other, equally distributed values.
"""
from functools import partial
from typing import Callable, List, Sequence, Tuple, Union

import cv2
import numpy as np
from PIL import Image, ImageEnhance

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
# ColorJitter's frames per float32 block: 8 x 160 x 160 x 3 x 4 B = 2.5 MB, reused buffers (the whole 768-frame
# window as float32 is 236 MB of fresh pages, streamed through memory at every step).
JITTER_CHUNK = 8
PIL_BLOCK = 4  # frames per Pillow call of the Color operation: measured fastest (1: 168 ms, 4: 141, 16: 292)


def _warp(clip: Clip, matrix: np.ndarray) -> Clip:
    """Every frame through the same 2x3 affine map: bilinear, outside filled with 0 (imgaug's Affine defaults)."""
    height, width = clip.shape[1:3]
    out = np.empty_like(clip)  # each frame is warped straight into it (no list of frames to stack)
    for frame, dst in zip(clip, out):
        cv2.warpAffine(frame, matrix, (width, height), dst=dst, flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out


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


def apply_table(clip: Clip, table: np.ndarray) -> Clip:
    """``table[value]`` for every value: ``cv2.LUT`` on the clip as one image (numpy's ``table[clip]`` gathers
    through int64 indices, ~15x slower). ``table``: 256 entries, or ``(256, 1, 3)`` for one per channel."""
    return cv2.LUT(clip.reshape(-1, clip.shape[2], 3), table).reshape(clip.shape)


def solarize(clip: Clip, threshold: float) -> Clip:
    """Invert values at or above ``threshold`` (imgaug's ``Solarize``), through a 256-entry lookup table."""
    values = np.arange(256)
    return apply_table(clip, np.where(values >= threshold, 255 - values, values).astype(np.uint8))


def invert(clip: Clip) -> Clip:
    """255 - value (imgaug's ``Invert`` with p=1)."""
    return 255 - clip


def as_image(clip: Clip) -> Image.Image:
    """The frames stacked top to bottom as one Pillow image: one call runs a Pillow operation on all of them."""
    return Image.fromarray(clip.reshape(-1, clip.shape[2], 3))


def from_image(image: Image.Image, shape: Tuple[int, ...]) -> Clip:
    """The inverse of :func:`as_image`."""
    return np.asarray(image).reshape(shape)


def in_blocks(clip: Clip, op: Callable[[Clip], Clip]) -> Clip:
    """``op`` on blocks of ``PIL_BLOCK`` frames, into one output: few Pillow calls, each on data that fits in cache
    (Pillow on all 768 frames at once is slower than frame by frame)."""
    out = np.empty_like(clip)
    for start in range(0, len(clip), PIL_BLOCK):
        out[start:start + PIL_BLOCK] = op(clip[start:start + PIL_BLOCK])
    return out


def color(clip: Clip, factor: float) -> Clip:
    """PIL's ``ImageEnhance.Color(frame).enhance(factor)`` on every frame: a per-pixel blend with the pixel's grey,
    so one call on stacked frames gives the same values."""
    return in_blocks(clip, lambda frames: from_image(ImageEnhance.Color(as_image(frames)).enhance(factor),
                                                     frames.shape))


def brightness(clip: Clip, factor: float) -> Clip:
    """PIL's ``ImageEnhance.Brightness(frame).enhance(factor)`` on every frame: a function of each value alone,
    tabulated by running Pillow on the 256 values."""
    values = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)
    return apply_table(clip, np.asarray(ImageEnhance.Brightness(Image.fromarray(values)).enhance(factor))[0, :, 0])


def contrast(clip: Clip, factor: float) -> Clip:
    """PIL's ``ImageEnhance.Contrast(frame).enhance(factor)`` on every frame: a blend of each value with the rounded
    mean grey of its frame (PIL's ``ImageStat`` mean: the exact sum over the pixel count), tabulated by Pillow for
    every (mean, value) pair and applied per frame."""
    grey = np.asarray(as_image(clip).convert('L')).reshape(len(clip), -1)
    means = [int(int(total) / grey.shape[1] + 0.5) for total in grey.sum(axis=1, dtype=np.int64)]
    levels = np.arange(256, dtype=np.uint8)
    table = np.asarray(Image.blend(Image.fromarray(np.repeat(levels[:, None], 256, axis=1)),
                                   Image.fromarray(np.repeat(levels[None, :], 256, axis=0)), factor))
    out = np.empty_like(clip)
    for frame, dst, mean in zip(clip, out, means):
        cv2.LUT(frame, table[mean], dst=dst)
    return out


def sharpness(clip: Clip, factor: float) -> Clip:
    """PIL's ``ImageEnhance.Sharpness(frame).enhance(factor)`` on every frame. Pillow's float 3x3 filter and blend
    are the cost: stacking frames into one image (border rows copied back) measured no faster, so frame by frame."""
    out = np.empty_like(clip)
    for frame, dst in zip(clip, out):
        dst[...] = ImageEnhance.Sharpness(Image.fromarray(frame)).enhance(factor)
    return out


def band_histograms(clip: Clip) -> np.ndarray:
    """``(T, 3, 256)`` counts of each value per frame and channel (Pillow's ``Image.histogram`` of each frame)."""
    return np.array([Image.fromarray(frame).histogram() for frame in clip], np.int64).reshape(len(clip), 3, 256)


def per_frame_tables(clip: Clip, tables: np.ndarray) -> Clip:
    """Frame ``t``, channel ``c`` through ``tables[t, c]`` (``(T, 3, 256)`` uint8)."""
    out = np.empty_like(clip)
    for frame, dst, table in zip(clip, out, tables.transpose(0, 2, 1)[:, :, None, :]):
        cv2.LUT(frame, np.ascontiguousarray(table), dst=dst)
    return out


def autocontrast(clip: Clip) -> Clip:
    """PIL's ``ImageOps.autocontrast`` (cutoff 0) on every frame: per channel, ``int(v * scale + offset)`` clipped,
    stretching the channel's lowest..highest value of the frame to 0..255 (identity when it has one value)."""
    present = band_histograms(clip) > 0
    low = present.argmax(axis=2)[..., None].astype(np.float64)
    high = 255 - present[..., ::-1].argmax(axis=2)[..., None].astype(np.float64)
    with np.errstate(divide='ignore', invalid='ignore'):
        scale = 255.0 / (high - low)
        tables = np.clip(np.trunc(np.arange(256) * scale + -low * scale), 0, 255)
    tables = np.where(high > low, tables, np.arange(256))
    return per_frame_tables(clip, tables.astype(np.uint8))


def equalize(clip: Clip) -> Clip:
    """PIL's ``ImageOps.equalize`` on every frame: per channel, ``(step // 2 + pixels below v) // step`` with
    ``step = (pixels - pixels of the highest present value) // 255`` (identity when ``step`` is 0), at most 255."""
    counts = band_histograms(clip)
    top = 255 - (counts[..., ::-1] > 0).argmax(axis=2)
    step = (counts.sum(axis=2) - np.take_along_axis(counts, top[..., None], axis=2)[..., 0]) // 255
    below = np.cumsum(counts, axis=2) - counts
    safe = np.maximum(step, 1)[..., None]
    tables = np.where(step[..., None] > 0, (safe // 2 + below) // safe, np.arange(256))
    return per_frame_tables(clip, np.minimum(tables, 255).astype(np.uint8))  # Pillow saturates a 256 entry


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
            ('color', partial(color, factor=ENHANCE_FACTOR)),
            ('contrast', partial(contrast, factor=ENHANCE_FACTOR)),
            ('brightness', partial(brightness, factor=ENHANCE_FACTOR)),
            ('sharpness', partial(sharpness, factor=ENHANCE_FACTOR)),
            ('autocontrast', autocontrast),  # PIL's default cutoff=0
            ('equalize', equalize),
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


def grayscale(planes: np.ndarray, out: np.ndarray) -> np.ndarray:
    """mmaction2's luma ``(0.2989 R + 0.587 G) + 0.114 B`` of float32 ``(3, ...)`` planes, into ``out``.

    The same float32 products and sums, in the same order, as ``0.2989 * r + 0.587 * g + 0.114 * b``; on planes they
    read contiguous memory (on ``(..., 3)`` pixels each reads every third value, several times slower).
    """
    np.multiply(planes[0], 0.2989, out=out)
    out += np.multiply(planes[1], 0.587, dtype=np.float32)
    out += np.multiply(planes[2], 0.114, dtype=np.float32)
    return out


def hue_table(factor: float) -> np.ndarray:
    """``cv2.LUT`` table adding ``int(factor * 255)`` to OpenCV's hue (0..179) modulo 180."""
    return ((np.arange(256) + int(factor * 255)) % 180).astype(np.uint8)


def shift_hue(pixels: np.ndarray, table: np.ndarray, out: np.ndarray) -> np.ndarray:
    """uint8 RGB ``(N, H, W, 3)`` pixels with OpenCV's hue through ``table`` (:func:`hue_table`), into ``out``.
    The hue plane alone goes through the table (a 3-channel table is twice as slow)."""
    width = pixels.shape[2]
    hue, saturation, value = cv2.split(cv2.cvtColor(pixels.reshape(-1, width, 3), cv2.COLOR_RGB2HSV))
    hsv = cv2.merge([cv2.LUT(hue, table, dst=hue), saturation, value])
    cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB, dst=out.reshape(-1, width, 3))
    return out


def to_pixels(planes: np.ndarray, out: np.ndarray) -> np.ndarray:
    """uint8 ``(3, N, H, W)`` planes interleaved into ``out`` ``(N, H, W, 3)``."""
    width = planes.shape[3]
    cv2.merge(list(planes.reshape(3, -1, width)), dst=out.reshape(-1, width, 3))
    return out


def to_planes(pixels: np.ndarray, out: np.ndarray) -> np.ndarray:
    """uint8 ``(N, H, W, 3)`` pixels as ``(3, N, H, W)`` planes of ``out`` (float32 or uint8)."""
    for plane, channel in zip(out, cv2.split(pixels.reshape(-1, pixels.shape[2], 3))):
        np.copyto(plane, channel.reshape(plane.shape))
    return out


@TRANSFORMS.register_module()
class ColorJitter:
    """mmaction2's ``ColorJitter``: one brightness, contrast, saturation and hue factor per clip.

    Brightness multiplies the values; contrast blends each frame with the mean of its grayscale; saturation blends
    each pixel with its grayscale; hue shifts OpenCV's hue channel by ``int(h * 255)`` modulo 180. The order of the
    four is a permutation drawn once, when the transform is built (as mmaction2 does); values are clipped to
    [0, 255] and truncated to uint8 at the end.

    Computed on blocks of ``JITTER_CHUNK`` frames held as float32 colour planes (every step is per frame, and per
    plane the maths reads contiguous memory): the same float32 operations in the same order as on the whole clip, so
    the same values, without streaming a 236 MB float32 window through memory at every step. A hue shift first or
    last acts on the uint8 pixels directly (float32 holding uint8 values clips and truncates to themselves).

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
        factors = self.sample()
        steps = [op for op in self.order if factors[op] != (0 if op == 3 else 1)]  # the others change nothing
        imgs = results['imgs']
        size = (3, min(JITTER_CHUNK, len(imgs))) + imgs.shape[1:3]
        buffers = np.empty(size, np.float32), np.empty(size[1:], np.float32), np.empty(size, np.uint8)
        out = np.empty(imgs.shape, np.uint8)
        for start in range(0, len(imgs), JITTER_CHUNK):  # every step is per frame: blocks give the same values
            block = slice(start, start + JITTER_CHUNK)
            self.jitter(imgs[block], steps, factors, buffers, out[block])
        results['imgs'] = out
        return results

    @staticmethod
    def jitter(frames: np.ndarray, steps: List[int], factors: Tuple[float, float, float, float],
               buffers: Tuple[np.ndarray, np.ndarray, np.ndarray], out: np.ndarray) -> None:
        """``steps`` (0-3: brightness, contrast, saturation, hue) on a block of uint8 frames, into ``out``."""
        b, c, s, h = factors
        hue = hue_table(h)
        if steps[:1] == [3]:
            frames, steps = shift_hue(frames, hue, out), steps[1:]
        if not steps:
            np.copyto(out, frames)
            return
        last_hue = steps[-1] == 3
        count = len(frames)
        clip, grey, planes_u8 = buffers[0][:, :count], buffers[1][:count], buffers[2][:, :count]
        to_planes(frames, clip)
        for op in steps[:-1] if last_hue else steps:
            if op == 0:
                clip *= b
            elif op == 1:
                mean = grayscale(clip, grey).mean(axis=(1, 2))[:, None, None]
                clip *= c
                clip += (1 - c) * mean
            elif op == 2:
                grayscale(clip, grey)
                clip *= s
                clip += np.multiply(grey, 1 - s, out=grey)
            else:  # clip to uint8, shift the hue, back to float
                np.copyto(planes_u8, np.clip(clip, 0, 255, out=clip), casting='unsafe')
                pixels = to_pixels(planes_u8, out)
                to_planes(shift_hue(pixels, hue, pixels), clip)
        np.copyto(planes_u8, np.clip(clip, 0, 255, out=clip), casting='unsafe')  # truncates, as astype does
        to_pixels(planes_u8, out)
        if last_hue:
            shift_hue(out, hue, out)
