"""Hand transforms: load the image, cut HaMeR's square crop around the hand (with its augmentation), pack targets."""
from typing import Any, Dict, Optional, Tuple

import cv2
import numpy as np
import torch
from mmcv.transforms import BaseTransform

from opentad_lora.registry import TRANSFORMS


@TRANSFORMS.register_module()
class LoadHandImage(BaseTransform):
    """Read ``img_path`` with OpenCV (BGR uint8) into ``img``; ``ori_shape`` is its (height, width)."""

    def transform(self, results: Dict[str, Any]) -> Dict[str, Any]:
        image = cv2.imread(results['img_path'], cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f'Cannot read image {results["img_path"]} (missing or not an image).')
        results['img'] = image
        results['ori_shape'] = image.shape[:2]
        return results


def crop_affine(center: np.ndarray, size: float, rotation_deg: float, out_size: int) -> np.ndarray:
    """2x3 affine taking the square box (``center``, side ``size``, turned by ``rotation_deg``) onto the crop."""
    theta = np.deg2rad(rotation_deg)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    linear = out_size / size * rot
    return np.concatenate([linear, (out_size / 2 - linear @ center)[:, None]], axis=1)


def rotation_z(rotation_deg: float) -> np.ndarray:
    """The camera-frame rotation about the optical axis that turns projected points by ``rotation_deg``."""
    theta = np.deg2rad(rotation_deg)
    return np.array([[np.cos(theta), -np.sin(theta), 0.0], [np.sin(theta), np.cos(theta), 0.0], [0.0, 0.0, 1.0]])


@TRANSFORMS.register_module()
class HandCrop(BaseTransform):
    """Cut a square ``img_size`` crop around the hand and express the targets in it (HaMeR's ``get_example``).

    The box is the bounding square of the projected keypoints times ``bbox_expand``. With ``augment`` the box is
    scaled, shifted and rotated and the colours scaled (HaMeR's ``DATASETS.CONFIG`` factors); a rotation turns the
    3D keypoints and the global orientation about the optical axis by the same angle. 2D keypoints are returned in
    HaMeR's normalised crop coordinates (``pixel / img_size - 0.5``).

    Args:
        img_size: Side of the output crop (HaMeR: 256).
        bbox_expand: Crop side / keypoint bounding-square side.
        augment: Apply the random augmentation (training).
        scale_factor, rot_factor, trans_factor, color_scale: HaMeR's augmentation magnitudes.
        rot_aug_rate, trans_aug_rate: Probabilities of rotating and shifting.
    """

    def __init__(self, img_size: int = 256, bbox_expand: float = 2.0, augment: bool = False,
                 scale_factor: float = 0.3, rot_factor: float = 30.0, trans_factor: float = 0.02,
                 color_scale: float = 0.2, rot_aug_rate: float = 0.6, trans_aug_rate: float = 0.5) -> None:
        self.img_size = img_size
        self.bbox_expand = bbox_expand
        self.augment = augment
        self.scale_factor, self.rot_factor, self.trans_factor = scale_factor, rot_factor, trans_factor
        self.color_scale = color_scale
        self.rot_aug_rate, self.trans_aug_rate = rot_aug_rate, trans_aug_rate

    def _sample(self) -> Tuple[float, float, np.ndarray, np.ndarray]:
        """``(scale, rotation in degrees, shift in box sides, colour scales)``; identity without ``augment``."""
        if not self.augment:
            return 1.0, 0.0, np.zeros(2), np.ones(3)
        scale = float(np.clip(1 + np.random.randn() * self.scale_factor, 1 - self.scale_factor,
                              1 + self.scale_factor))
        rot = 0.0
        if np.random.rand() < self.rot_aug_rate:
            rot = float(np.clip(np.random.randn(), -2.0, 2.0) * self.rot_factor)
        shift = np.random.randn(2) * self.trans_factor if np.random.rand() < self.trans_aug_rate else np.zeros(2)
        colors = np.random.uniform(1 - self.color_scale, 1 + self.color_scale, size=3)
        return scale, rot, shift, colors

    def transform(self, results: Dict[str, Any]) -> Dict[str, Any]:
        K, xyz = results['K'].astype(np.float64), results['keypoints_3d'].astype(np.float64)
        uv = xyz @ K.T
        uv = uv[:, :2] / uv[:, 2:3]
        center = (uv.min(0) + uv.max(0)) / 2
        size = float((uv.max(0) - uv.min(0)).max()) * self.bbox_expand
        scale, rot, shift, colors = self._sample()
        center, size = center + shift * size, size * scale
        affine = crop_affine(center, size, rot, self.img_size)
        crop = cv2.warpAffine(results['img'], affine, (self.img_size, self.img_size), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        if self.augment:
            crop = np.clip(crop.astype(np.float32) * colors[None, None], 0, 255).astype(np.uint8)
        uv_crop = uv @ affine[:, :2].T + affine[:, 2]
        results['img'] = crop
        results['keypoints_2d'] = np.concatenate([uv_crop / self.img_size - 0.5, np.ones((len(uv), 1))],
                                                 axis=1).astype(np.float32)
        rot3 = rotation_z(rot)
        results['keypoints_3d'] = (xyz @ rot3.T).astype(np.float32)
        if 'vertices' in results:
            results['vertices'] = (results['vertices'].astype(np.float64) @ rot3.T).astype(np.float32)
        if 'global_orient' in results:
            results['global_orient'] = (rot3 @ results['global_orient']).astype(np.float32)
        results.update(box_center=center.astype(np.float32), box_size=np.float32(size), rotation=np.float32(rot))
        return results


@TRANSFORMS.register_module()
class PackHandInputs(BaseTransform):
    """Pack the crop as ``inputs`` (CHW uint8) and the targets as a dict of float tensors ``data_samples``.

    Missing annotations are zero-filled with a ``has_*`` flag of 0, so samples batch with ``default_collate``.
    The discriminator's "real" pose is the drawn MoCap sample, else the sample's own MANO annotation, else the
    flat hand.

    Args:
        num_vertices: Mesh size used to zero-fill a missing ``vertices`` annotation.
        num_hand_joints: Finger joints of the MANO pose.
        num_betas: Shape coefficients.
    """

    def __init__(self, num_vertices: int = 778, num_hand_joints: int = 15, num_betas: int = 10) -> None:
        self.num_vertices, self.num_hand_joints, self.num_betas = num_vertices, num_hand_joints, num_betas

    def _get(self, results: Dict[str, Any], key: str, shape: Tuple[int, ...],
             fill: Optional[np.ndarray] = None) -> Tuple[torch.Tensor, float]:
        if key in results:
            return torch.as_tensor(np.asarray(results[key], np.float32).reshape(shape)), 1.0
        default = np.zeros(shape, np.float32) if fill is None else fill
        return torch.as_tensor(default), 0.0

    def transform(self, results: Dict[str, Any]) -> Dict[str, Any]:
        eye = lambda n: np.tile(np.eye(3, dtype=np.float32), (n, 1, 1))  # noqa: E731
        joints = self.num_hand_joints
        samples: Dict[str, Any] = dict(sample_idx=int(results.get('sample_idx', -1)))
        samples['keypoints_2d'] = torch.as_tensor(results['keypoints_2d'], dtype=torch.float32)
        xyz = np.asarray(results['keypoints_3d'], np.float32)
        samples['keypoints_3d'] = torch.as_tensor(np.concatenate([xyz, np.ones((len(xyz), 1), np.float32)], 1))
        for key, shape, fill in (('global_orient', (1, 3, 3), eye(1)), ('hand_pose', (joints, 3, 3), eye(joints)),
                                 ('betas', (self.num_betas,), None), ('vertices', (self.num_vertices, 3), None)):
            samples[key], samples[f'has_{key}'] = self._get(results, key, shape, fill)
        if 'mocap_hand_pose' in results:
            samples['mocap_hand_pose'], _ = self._get(results, 'mocap_hand_pose', (joints, 3, 3))
            samples['mocap_betas'], _ = self._get(results, 'mocap_betas', (self.num_betas,))
        else:
            samples['mocap_hand_pose'], samples['mocap_betas'] = samples['hand_pose'], samples['betas']
        for key in ('box_center', 'box_size', 'K'):
            if key in results:
                samples[key] = torch.as_tensor(np.asarray(results[key], np.float32))
        inputs = torch.from_numpy(np.ascontiguousarray(results['img'].transpose(2, 0, 1)))
        return dict(inputs=inputs, data_samples=samples)
