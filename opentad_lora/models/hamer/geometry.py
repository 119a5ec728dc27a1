"""Rotation and camera maths shared by the HaMeR head, MANO layer, losses, data pipeline and demo."""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def rot6d_to_rotmat(x: Tensor) -> Tensor:
    """6D rotation (Zhou et al., CVPR 2019) to rotation matrices, HaMeR's convention.

    The six numbers of each rotation are read as two 3-vectors ``a1 = x[0:3]`` and ``a2 = x[3:6]`` (columns after
    HaMeR's reshape(-1, 2, 3).transpose); Gram-Schmidt gives ``b1, b2`` and ``b3 = b1 x b2``; ``R = [b1 b2 b3]``.

    Args:
        x: ``(..., 6k)`` tensor; every consecutive 6 numbers are one rotation.

    Returns:
        ``(N, 3, 3)`` rotations, ``N = x.numel() // 6``, with orthonormal columns and determinant +1.
    """
    pairs = x.reshape(-1, 2, 3)
    a1, a2 = pairs[:, 0], pairs[:, 1]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack((b1, b2, b3), dim=-1)


def aa_to_rotmat(axis_angle: Tensor) -> Tensor:
    """Axis-angle vectors ``(..., 3)`` to rotation matrices ``(..., 3, 3)`` (Rodrigues, exact at angle 0)."""
    angle = axis_angle.norm(dim=-1, keepdim=True).unsqueeze(-1)
    x, y, z = axis_angle.unbind(-1)
    zero = torch.zeros_like(x)
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*axis_angle.shape[:-1], 3, 3)
    # sin(t)/t and (1-cos t)/t^2 with their Taylor series near 0 so the map and its gradient stay finite.
    small = angle < 1e-4
    safe = torch.where(small, torch.ones_like(angle), angle)
    sinc = torch.where(small, 1 - angle ** 2 / 6, torch.sin(safe) / safe)
    cosc = torch.where(small, 0.5 - angle ** 2 / 24, (1 - torch.cos(safe)) / safe ** 2)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device).expand_as(skew)
    return eye + sinc * skew + cosc * skew @ skew


def perspective_projection(points: Tensor, translation: Tensor, focal_length: Tensor,
                           camera_center: Optional[Tensor] = None) -> Tensor:
    """Project ``(B, N, 3)`` points translated by ``(B, 3)`` with pinhole ``focal_length`` ``(B, 2)``.

    Returns:
        ``(B, N, 2)`` image coordinates ``f * (X / Z) + c`` (``c`` defaults to 0, HaMeR's crop-centred convention).
    """
    points = points + translation[:, None, :]
    projected = points[..., :2] / points[..., 2:3] * focal_length[:, None, :]
    if camera_center is not None:
        projected = projected + camera_center[:, None, :]
    return projected


def cam_to_translation(pred_cam: Tensor, focal_length: float, image_size: int) -> Tensor:
    """HaMeR's weak-perspective camera ``(s, tx, ty)`` to a translation ``(tx, ty, 2 f / (image_size * s))``."""
    depth = 2 * focal_length / (image_size * pred_cam[:, 0] + 1e-9)
    return torch.stack([pred_cam[:, 1], pred_cam[:, 2], depth], dim=-1)


def cam_crop_to_full(pred_cam: Tensor, box_center: Tensor, box_size: Tensor, principal_point: Tensor,
                     focal_length: Tensor) -> Tensor:
    """Camera of a crop to the translation of the hand in the full image's camera.

    Args:
        pred_cam: ``(B, 3)`` crop camera ``(s, tx, ty)``.
        box_center: ``(B, 2)`` crop centre in full-image pixels.
        box_size: ``(B,)`` crop side in full-image pixels.
        principal_point: ``(B, 2)`` principal point of the full image (HaMeR: the image centre).
        focal_length: ``(B,)`` focal length of the full image in pixels.

    Returns:
        ``(B, 3)`` translation such that projecting with the full camera lands where the crop camera did.
    """
    scale = pred_cam[:, 0] * box_size + 1e-9
    depth = 2 * focal_length / scale
    offset = box_center - principal_point
    tx = 2 * offset[:, 0] / scale + pred_cam[:, 1]
    ty = 2 * offset[:, 1] / scale + pred_cam[:, 2]
    return torch.stack([tx, ty, depth], dim=-1)
