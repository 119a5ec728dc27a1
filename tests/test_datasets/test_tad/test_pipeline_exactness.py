"""The fast forms of the TAD pipeline steps give bit-identical output to the straightforward per-frame formulas they
replaced (written out here as references), for the same random draws."""
import itertools

import cv2
import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from opentad_lora.datasets.tad import augment
from opentad_lora.datasets.tad.transforms import Flip, resize_frames


def per_frame(clip: np.ndarray, op) -> np.ndarray:
    return np.stack([np.asarray(op(Image.fromarray(frame))) for frame in clip])


def warp_reference(clip: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    height, width = clip.shape[1:3]
    return np.stack([cv2.warpAffine(frame, matrix, (width, height), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_CONSTANT, borderValue=0) for frame in clip])


def clips() -> list:
    """Full-range noise, a narrow range, a constant clip, smooth frames, and channels with one or two values."""
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, (6, 21, 17, 3), dtype=np.uint8)
    narrow = (noise // 3 + 50).astype(np.uint8)
    smooth = cv2.GaussianBlur(rng.integers(0, 256, (120, 40, 3), dtype=np.uint8), (9, 9), 3).reshape(3, 40, 40, 3)
    flat = narrow.copy()
    flat[..., 0] = 7
    flat[1, ..., 2] = 200
    flat[2, :3, :, 1] = 0
    return [noise, narrow, np.full((3, 8, 9, 3), 77, np.uint8), smooth, flat]


REFERENCES = {  # the formulas of the previous version of augment.py, frame by frame
    'solarize': lambda clip: np.where(np.arange(256) >= augment.SOLARIZE_THRESHOLD, 255 - np.arange(256),
                                      np.arange(256)).astype(np.uint8)[clip],
    'color': lambda clip: per_frame(clip, lambda im: ImageEnhance.Color(im).enhance(augment.ENHANCE_FACTOR)),
    'contrast': lambda clip: per_frame(clip, lambda im: ImageEnhance.Contrast(im).enhance(augment.ENHANCE_FACTOR)),
    'brightness': lambda clip: per_frame(clip,
                                         lambda im: ImageEnhance.Brightness(im).enhance(augment.ENHANCE_FACTOR)),
    'sharpness': lambda clip: per_frame(clip,
                                        lambda im: ImageEnhance.Sharpness(im).enhance(augment.ENHANCE_FACTOR)),
    'autocontrast': lambda clip: per_frame(clip, ImageOps.autocontrast),
    'equalize': lambda clip: per_frame(clip, ImageOps.equalize),
}


@pytest.mark.parametrize('name', sorted(REFERENCES))
def test_imgaug_pointwise_and_pillow_operations_equal_the_per_frame_formulas(name):
    np.random.seed(0)
    op = dict(augment.ImgAug().ops)[name]
    for clip in clips():
        assert np.array_equal(op(clip), REFERENCES[name](clip)), name


def test_imgaug_warps_equal_the_per_frame_stack():
    clip = clips()[3]
    for seed in range(3):  # both signs of every warp
        np.random.seed(seed)
        ops = dict(augment.ImgAug().ops)
        centre = (clip.shape[2] - 1) / 2, (clip.shape[1] - 1) / 2
        slope = {name: np.tan(np.deg2rad(ops[name].keywords['degrees'])) for name in ('shear_x', 'shear_y')}
        matrices = {
            'shear_x': [[1, slope['shear_x'], -slope['shear_x'] * centre[1]], [0, 1, 0]],
            'shear_y': [[1, 0, 0], [slope['shear_y'], 1, -slope['shear_y'] * centre[0]]],
            'translate_x': [[1, 0, ops['translate_x'].keywords['fraction_x'] * clip.shape[2]], [0, 1, 0]],
            'translate_y': [[1, 0, 0], [0, 1, ops['translate_y'].keywords['fraction_y'] * clip.shape[1]]],
            'rotate': cv2.getRotationMatrix2D(centre, ops['rotate'].keywords['degrees'], 1.0),
        }
        for name, matrix in matrices.items():
            assert np.array_equal(ops[name](clip), warp_reference(clip, np.array(matrix, np.float64))), name


def jitter_reference(clip: np.ndarray, order: list, b: float, c: float, s: float, h: float) -> np.ndarray:
    """mmaction2's ColorJitter maths on the whole clip in float32, as the previous version computed it."""

    def grey(x):
        return 0.2989 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]

    x = clip.astype(np.float32)
    for op in order:
        if op == 0 and b != 1:
            x *= b
        elif op == 1 and c != 1:
            mean = grey(x).mean(axis=(1, 2))[:, None, None, None]
            x *= c
            x += (1 - c) * mean
        elif op == 2 and s != 1:
            gray = grey(x)[..., None]
            x *= s
            x += (1 - s) * gray
        elif op == 3 and h != 0:
            frames = np.clip(x, 0, 255).astype(np.uint8)
            hsv = cv2.cvtColor(frames.reshape(-1, frames.shape[2], 3), cv2.COLOR_RGB2HSV)
            hsv[..., 0] = (hsv[..., 0].astype(np.int32) + int(h * 255)) % 180
            x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).reshape(frames.shape).astype(np.float32)
    return np.clip(x, 0, 255, out=x).astype(np.uint8)


def test_color_jitter_equals_the_whole_clip_float32_maths_for_every_order():
    clip = np.random.default_rng(2).integers(0, 256, (augment.JITTER_CHUNK + 5, 12, 10, 3), dtype=np.uint8)
    np.random.seed(0)
    jitter = augment.ColorJitter()
    draws = 0
    for order in itertools.permutations(range(4)):
        jitter.order = list(order)
        for _ in range(3):
            state = np.random.get_state()
            factors = jitter.sample()
            np.random.set_state(state)  # the transform draws the same factors again
            out = jitter(dict(imgs=clip.copy()))['imgs']
            assert np.array_equal(out, jitter_reference(clip, jitter.order, *factors)), (order, factors)
            draws += 1
    for factors in [(1, 1, 1, 0), (1.3, 1, 1, 0), (1, 1, 1, -0.07), (0.5, 1.5, 0.5, 0.1)]:  # ops left out
        jitter.sample = lambda factors=factors: factors
        out = jitter(dict(imgs=clip.copy()))['imgs']
        assert np.array_equal(out, jitter_reference(clip, jitter.order, *factors)), factors
    assert draws == 72


@pytest.mark.parametrize('size', [(160, 90), (40, 40), (91, 50), (33, 71)])
def test_resize_frames_equals_the_stack_of_per_frame_resizes(size):
    clip = np.random.default_rng(3).integers(0, 256, (4, 45, 80, 3), dtype=np.uint8)
    for view in (clip, clip[:, 3:40, 7:60], clip[:, :, ::-1]):  # crops and flips reach it as views
        interp = cv2.INTER_AREA if size[0] < view.shape[2] else cv2.INTER_LINEAR
        expected = np.stack([cv2.resize(frame, size, interpolation=interp) for frame in view])
        assert np.array_equal(resize_frames(view, size), expected)


def test_flip_equals_the_mirrored_view_and_draws_as_before():
    clip = np.random.default_rng(4).integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
    for view in (clip, clip[:, 1:4, 2:6]):
        for seed in range(6):
            np.random.seed(seed)
            out = Flip(flip_ratio=0.5)(dict(imgs=view))
            np.random.seed(seed)
            flipped = np.random.rand() < 0.5
            assert out['flip'] == flipped
            assert np.array_equal(out['imgs'], view[:, :, ::-1] if flipped else view)
