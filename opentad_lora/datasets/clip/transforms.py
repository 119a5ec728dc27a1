"""CLIP's image preprocessing with OpenCV: bicubic resize of the short side + centre crop (evaluation), and
RandomResizedCrop + horizontal flip (CLIP-LoRA's training augmentation)."""
import math
from typing import Dict, Sequence, Tuple

import cv2
import numpy as np
from mmcv.transforms import BaseTransform

from opentad_lora.registry import TRANSFORMS


def _crop(img: np.ndarray, top: int, left: int, height: int, width: int) -> np.ndarray:
    return img[top:top + height, left:left + width]


@TRANSFORMS.register_module()
class CLIPCenterCrop(BaseTransform):
    """Resize ``results['img']`` so its short side is ``size`` (bicubic), then crop the central ``size`` square."""

    def __init__(self, size: int) -> None:
        self.size = int(size)

    def transform(self, results: Dict) -> Dict:
        img = results['img']
        height, width = img.shape[:2]
        scale = self.size / min(height, width)
        new_h, new_w = max(self.size, round(height * scale)), max(self.size, round(width * scale))
        if (new_h, new_w) != (height, width):
            img = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_CUBIC)
        top, left = (new_h - self.size) // 2, (new_w - self.size) // 2
        results['img'] = np.ascontiguousarray(_crop(img, top, left, self.size, self.size))
        results['img_shape'] = results['img'].shape[:2]
        return results


@TRANSFORMS.register_module()
class CLIPRandomResizedCrop(BaseTransform):
    """Crop a random area fraction in ``scale`` with aspect ratio in ``ratio`` (log-uniform), resize it to ``size``
    (bicubic), flip horizontally with probability ``flip_prob``. Falls back to the central crop after 10 misses.

    Randomness comes from numpy's global RNG, which MMEngine seeds per dataloader worker.
    """

    def __init__(self, size: int, scale: Sequence[float] = (0.08, 1.0),
                 ratio: Sequence[float] = (3 / 4, 4 / 3), flip_prob: float = 0.5) -> None:
        self.size, self.scale, self.ratio, self.flip_prob = int(size), tuple(scale), tuple(ratio), flip_prob

    def _box(self, height: int, width: int) -> Tuple[int, int, int, int]:
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * np.random.uniform(*self.scale)
            aspect = math.exp(np.random.uniform(*log_ratio))
            w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                return np.random.randint(0, height - h + 1), np.random.randint(0, width - w + 1), h, w
        side = min(height, width)
        return (height - side) // 2, (width - side) // 2, side, side

    def transform(self, results: Dict) -> Dict:
        img = results['img']
        img = _crop(img, *self._box(*img.shape[:2]))
        img = cv2.resize(img, (self.size, self.size), interpolation=cv2.INTER_CUBIC)
        if np.random.rand() < self.flip_prob:
            img = img[:, ::-1]
        results['img'] = np.ascontiguousarray(img)
        results['img_shape'] = results['img'].shape[:2]
        return results
