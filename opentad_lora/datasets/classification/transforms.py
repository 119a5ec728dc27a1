"""Image transforms of the classification pipeline: read with OpenCV, resize, pack for the model."""
from typing import Dict, Optional, Sequence, Union

import cv2
import numpy as np
import torch
from mmcv.transforms import BaseTransform
from mmengine.structures import BaseDataElement

from opentad_lora.registry import TRANSFORMS


def read_image(path: str, to_rgb: bool = True) -> np.ndarray:
    """Read a colour image as an (H, W, 3) uint8 array (RGB by default).

    Raises:
        OSError: The file is missing, unreadable or not a decodable image; the message names it.
    """
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise OSError(f'Cannot read image {path}: the file is missing, corrupt or not an image.')
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if to_rgb else img


@TRANSFORMS.register_module()
class LoadImage(BaseTransform):
    """Read ``results['img_path']`` into ``results['img']`` (H, W, 3) uint8; also sets ``img_shape``.

    Args:
        to_rgb: Convert OpenCV's BGR to RGB (the order the model's mean/std are given in).
    """

    def __init__(self, to_rgb: bool = True) -> None:
        self.to_rgb = to_rgb

    def transform(self, results: Dict) -> Dict:
        results['img'] = read_image(results['img_path'], self.to_rgb)
        results['img_shape'] = results['img'].shape[:2]
        return results


@TRANSFORMS.register_module()
class ResizeImage(BaseTransform):
    """Resize ``results['img']`` to ``size`` = (H, W) (an int means square) with OpenCV.

    Args:
        size: Target size.
        interpolation: OpenCV flag name: ``'bilinear'``, ``'nearest'``, ``'area'`` or ``'bicubic'``.
    """

    _FLAGS = dict(bilinear=cv2.INTER_LINEAR, nearest=cv2.INTER_NEAREST, area=cv2.INTER_AREA,
                  bicubic=cv2.INTER_CUBIC)

    def __init__(self, size: Union[int, Sequence[int]], interpolation: str = 'bilinear') -> None:
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        if interpolation not in self._FLAGS:
            raise ValueError(f'interpolation must be one of {sorted(self._FLAGS)}, got {interpolation!r}.')
        self.interpolation = interpolation

    def transform(self, results: Dict) -> Dict:
        height, width = self.size
        if results['img'].shape[:2] != (height, width):
            results['img'] = cv2.resize(results['img'], (width, height),
                                        interpolation=self._FLAGS[self.interpolation])
        results['img_shape'] = results['img'].shape[:2]
        return results


@TRANSFORMS.register_module()
class PackClsInputs(BaseTransform):
    """Pack into ``dict(inputs=(3, H, W) uint8 tensor, data_samples=BaseDataElement(gt_label, img_path, ...))``.

    The model's data preprocessor converts to float and normalises the batch, so the dataloader moves uint8.

    Args:
        meta_keys: Keys of ``results`` copied as metainfo of the data sample.
    """

    def __init__(self, meta_keys: Sequence[str] = ('img_path', 'img_shape')) -> None:
        self.meta_keys = tuple(meta_keys)

    def transform(self, results: Dict) -> Dict:
        img = np.ascontiguousarray(results['img'].transpose(2, 0, 1))
        sample = BaseDataElement(metainfo={k: results[k] for k in self.meta_keys if k in results})
        label: Optional[int] = results.get('gt_label')
        if label is not None:
            sample.gt_label = torch.as_tensor(label, dtype=torch.long)
        return dict(inputs=torch.from_numpy(img), data_samples=sample)
