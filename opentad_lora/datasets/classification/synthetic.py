"""Synthetic image-folder data: K classes of distinct colour/stripe patterns with noise, written as real PNGs."""
import colorsys
from pathlib import Path
from typing import Dict, Union

import cv2
import numpy as np

PATTERNS = ('horizontal', 'vertical', 'checker', 'diagonal')


def class_pattern_image(label: int, num_classes: int, img_size: int, rng: np.random.Generator,
                        noise_std: float = 20.0) -> np.ndarray:
    """One (img_size, img_size, 3) uint8 RGB image of class ``label``.

    A class is a hue (evenly spaced over the colour wheel) and a stripe pattern (cycling over :data:`PATTERNS`);
    the frequency and phase of the stripes and the pixel noise are random per image.
    """
    y, x = np.mgrid[0:img_size, 0:img_size].astype(np.float64) / img_size
    freq = rng.uniform(2.0, 4.0)
    phase = rng.uniform(0.0, 2 * np.pi)
    kind = PATTERNS[label % len(PATTERNS)]
    if kind == 'horizontal':
        wave = np.sin(2 * np.pi * freq * y + phase)
    elif kind == 'vertical':
        wave = np.sin(2 * np.pi * freq * x + phase)
    elif kind == 'checker':
        wave = np.sign(np.sin(2 * np.pi * freq * x + phase) * np.sin(2 * np.pi * freq * y + phase))
    else:
        wave = np.sin(2 * np.pi * freq * (x + y) + phase)
    colour = np.array(colorsys.hsv_to_rgb(label / num_classes, 0.8, 1.0))
    img = 40.0 + 180.0 * (0.5 + 0.5 * wave)[..., None] * colour[None, None, :]
    img += rng.normal(0.0, noise_std, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def write_synthetic_image_folder(out_dir: Union[str, Path], num_classes: int = 4, train_per_class: int = 32,
                                 val_per_class: int = 16, img_size: int = 32, noise_std: float = 20.0,
                                 seed: int = 0) -> Dict[str, int]:
    """Write ``out_dir/{train,val}/class_<k>/<i>.png`` and return the number of images per split.

    Deterministic for a given ``seed``; the splits use disjoint random streams.
    """
    if num_classes < 2:
        raise ValueError(f'num_classes must be >= 2, got {num_classes}.')
    counts = {}
    for split_id, (split, per_class) in enumerate((('train', train_per_class), ('val', val_per_class))):
        rng = np.random.default_rng([seed, split_id])
        for label in range(num_classes):
            folder = Path(out_dir) / split / f'class_{label}'
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(per_class):
                img = class_pattern_image(label, num_classes, img_size, rng, noise_std)
                path = folder / f'{index:04d}.png'
                if not cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
                    raise OSError(f'Could not write {path}.')
        counts[split] = num_classes * per_class
    return counts
