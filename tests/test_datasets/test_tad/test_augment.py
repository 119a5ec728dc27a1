"""ImgAug('default') and ColorJitter: mmaction2's parameters, one draw per clip, the same operation on every frame."""
import colorsys
from pathlib import Path

import numpy as np
import pytest
from mmengine.config import Config

from opentad_lora.datasets.tad.augment import ColorJitter, ImgAug
from opentad_lora.registry import TRANSFORMS, register_all_modules

ROOT = Path(__file__).resolve().parents[3]
OP_NAMES = ['shear_x', 'shear_y', 'translate_x', 'translate_y', 'rotate', 'posterize', 'solarize', 'color',
            'contrast', 'brightness', 'sharpness', 'autocontrast', 'equalize', 'invert', 'cutout']


def random_clip(frames: int = 3, size: int = 24, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (frames, size, size, 3), dtype=np.uint8)


def repeated_frame(frames: int = 3, size: int = 24) -> np.ndarray:
    return np.repeat(random_clip(1, size), frames, axis=0)


def run(transform, clip: np.ndarray) -> np.ndarray:
    return transform(dict(imgs=clip.copy()))['imgs']


@pytest.mark.parametrize('cls', [ImgAug, ColorJitter])
def test_deterministic_given_a_seed_and_varied_across_seeds(cls):
    outputs = []
    for seed in (0, 0, 1, 2):
        np.random.seed(seed)
        transform = cls()
        outputs.append(run(transform, random_clip()))
    assert np.array_equal(outputs[0], outputs[1])
    assert not all(np.array_equal(outputs[0], other) for other in outputs[2:])
    assert all(out.dtype == np.uint8 and out.shape == (3, 24, 24, 3) for out in outputs)


def test_every_operation_is_the_same_on_every_frame_and_stays_uint8():
    np.random.seed(0)
    augment = ImgAug()
    assert [name for name, _ in augment.ops] == OP_NAMES
    clip = repeated_frame()
    clip[..., 1:] = clip[..., 1:] // 2 + 40  # red spans 0..255 (solarize acts), green/blue do not (autocontrast)
    for name, op in augment.ops:
        out = op(clip)
        assert out.dtype == np.uint8 and out.shape == clip.shape, name
        assert all(np.array_equal(out[0], frame) for frame in out[1:]), name
        assert not np.array_equal(out, clip), name  # each operation does something on a random frame
    for seed in range(10):  # whole transforms: operations, cutout position and jitter factors drawn per clip
        np.random.seed(seed)
        for transform in (ImgAug(), ColorJitter()):
            out = run(transform, clip)
            assert all(np.array_equal(out[0], frame) for frame in out[1:])


def test_two_distinct_operations_per_clip_each_chosen_two_times_in_fifteen():
    np.random.seed(0)
    augment = ImgAug()
    draws = [augment.sample_ops() for _ in range(3000)]
    assert all(len(set(d)) == 2 and d == sorted(d) for d in draws)
    frequency = np.bincount(np.concatenate(draws), minlength=15) / len(draws)
    sigma = np.sqrt((2 / 15) * (13 / 15) / len(draws))
    assert np.all(np.abs(frequency - 2 / 15) < 4 * sigma), frequency


def test_pointwise_operations_in_closed_form():
    ops = dict(ImgAug().ops)
    values = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)
    assert np.array_equal(ops['invert'](values), 255 - values)
    assert np.array_equal(ops['posterize'](values), values & 0b11100000)  # 4 * 0.9 -> 3 bits
    solarized = ops['solarize'](values)  # threshold 256 * 0.9 = 230.4
    assert np.array_equal(solarized[values <= 230], values[values <= 230])
    assert np.array_equal(solarized[values >= 231], 255 - values[values >= 231])


def centroid(frame: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(frame[..., 0] > 60)
    weights = frame[rows, cols, 0].astype(float)
    return np.array([np.average(cols, weights=weights), np.average(rows, weights=weights)])


def test_geometric_magnitudes_are_mmactions():
    size, centre = 81, 40.0
    np.random.seed(0)
    augment = ImgAug()
    ops = dict(augment.ops)

    def moved(name: str, dx: int, dy: int) -> np.ndarray:
        clip = np.zeros((2, size, size, 3), np.uint8)
        clip[:, int(centre) + dy - 1:int(centre) + dy + 2, int(centre) + dx - 1:int(centre) + dx + 2] = 255
        return centroid(ops[name](clip)[1]) - centre

    x, y = moved('rotate', 24, 0)
    assert abs(np.degrees(abs(np.arctan2(y, x))) - 27) < 1.0 and abs(np.hypot(x, y) - 24) < 0.5
    assert abs(abs(moved('shear_x', 0, 24)[0]) - 24 * np.tan(np.radians(17.19 * 0.9))) < 0.3
    assert abs(abs(moved('shear_y', 24, 0)[1]) - 24 * np.tan(np.radians(17.19 * 0.9))) < 0.3
    assert abs(abs(moved('translate_x', 0, 0)[0]) - 0.18 * size) < 0.3
    assert abs(abs(moved('translate_y', 0, 0)[1]) - 0.18 * size) < 0.3
    # The side of the cutout square is 18 % of the frame height, filled with 128.
    clip = np.zeros((1, 100, 100, 3), np.uint8)
    np.random.seed(3)
    while True:
        out = ops['cutout'](clip)
        rows, cols = np.nonzero(out[0, ..., 0] == 128)
        if rows.min() > 0 and cols.min() > 0 and rows.max() < 99 and cols.max() < 99:  # fully inside
            break
    assert len(rows) == 18 * 18 and np.all(out[0, rows, cols] == 128)


def test_brightness_factor_in_closed_form_and_clipped_not_wrapped():
    clip = np.full((2, 4, 4, 3), 100, np.uint8)
    clip[1] = 250
    for seed in range(20):
        np.random.seed(seed)
        jitter = ColorJitter(contrast=0, saturation=0, hue=0)
        out = run(jitter, clip)
        np.random.seed(seed)  # mmaction2's draws: the order permutation, then b, c, s, h per clip
        np.random.permutation(4)
        factor = np.random.uniform(0.5, 1.5)
        assert np.all(out[0] == np.floor(np.float32(100) * np.float32(factor)))
        assert np.all(out[1] == min(255, int(np.float32(250) * np.float32(factor))))


def test_contrast_blends_each_frame_with_its_own_grey_mean_and_saturation_each_pixel():
    clip = random_clip(frames=2, size=8, seed=5)
    clip[1] //= 3
    np.random.seed(0)
    out = run(ColorJitter(brightness=(1.3, 1.3), contrast=0, saturation=0, hue=0), clip)
    np.testing.assert_array_equal(out, np.clip(clip.astype(np.float32) * np.float32(1.3), 0, 255).astype(np.uint8))
    for kind in ('contrast', 'saturation'):
        factor = 0.6
        jitter = ColorJitter(brightness=0, contrast=(factor, factor) if kind == 'contrast' else 0,
                             saturation=(factor, factor) if kind == 'saturation' else 0, hue=0)
        x = clip.astype(np.float64)
        grey = 0.2989 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
        target = grey.mean(axis=(1, 2))[:, None, None, None] if kind == 'contrast' else grey[..., None]
        expected = np.clip(factor * x + (1 - factor) * target, 0, 255)
        got = run(jitter, clip).astype(np.float64)
        assert np.all(np.abs(got - expected) <= 1.0), kind  # float32 maths, truncated to uint8


def test_hue_shift_in_degrees_matches_mmactions_opencv_units():
    red = np.zeros((2, 4, 4, 3), np.uint8)
    red[..., 0] = 255
    for hue in (0.05, -0.08):
        out = run(ColorJitter(brightness=0, contrast=0, saturation=0, hue=(hue, hue)), red)
        shift_degrees = 2 * (int(hue * 255) % 180)  # OpenCV hue units are 2 degrees
        expected = 255 * np.array(colorsys.hsv_to_rgb(shift_degrees / 360, 1, 1))
        assert np.all(np.abs(out.reshape(-1, 3) - expected) <= 2), (hue, out[0, 0, 0], expected)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match='only transforms="default"'):
        ImgAug(transforms=[dict(type='Rotate', rotate=(-20, 20))])
    with pytest.raises(ValueError, match='within'):
        ColorJitter(hue=0.7)


def test_seed_config_train_pipeline_has_the_augmentations_in_opentads_place():
    register_all_modules()
    cfg = Config.fromfile(ROOT / 'configs/adatad/thumos/e2e_thumos_videomae_s_768x1_160_adapter_qlora.py')
    types = [step['type'] for step in cfg.train_dataloader.dataset.pipeline]
    assert types[types.index('Flip') + 1:] == ['ImgAug', 'ColorJitter', 'PackTADInputs']
    built = [TRANSFORMS.build(step) for step in cfg.train_dataloader.dataset.pipeline[-3:-1]]
    assert isinstance(built[0], ImgAug) and isinstance(built[1], ColorJitter)
    assert built[1].brightness == (0.5, 1.5) and built[1].hue == (-0.1, 0.1)
