"""Camera pose maths of VGGT: quaternions (x, y, z, w), the 9-D ``absT_quaR_FoV`` encoding, first-frame normalisation.

Extrinsics are OpenCV camera-from-world ``[R | t]`` (3x4); intrinsics are pixel-unit 3x3 matrices.
"""
from typing import Tuple

import torch
from torch import Tensor


def quat_to_mat(quat: Tensor) -> Tensor:
    """(..., 4) quaternions ``(x, y, z, w)`` (any norm) -> (..., 3, 3) rotation matrices."""
    x, y, z, w = torch.unbind(quat, -1)
    two_s = 2.0 / (quat * quat).sum(-1)
    mat = torch.stack([
        1 - two_s * (y * y + z * z), two_s * (x * y - z * w), two_s * (x * z + y * w),
        two_s * (x * y + z * w), 1 - two_s * (x * x + z * z), two_s * (y * z - x * w),
        two_s * (x * z - y * w), two_s * (y * z + x * w), 1 - two_s * (x * x + y * y),
    ], -1)
    return mat.reshape(quat.shape[:-1] + (3, 3))


def mat_to_quat(mat: Tensor) -> Tensor:
    """(..., 3, 3) rotations -> (..., 4) unit quaternions ``(x, y, z, w)`` with ``w >= 0``.

    Computes the four candidate solutions of Shepperd's method and keeps, per matrix, the best-conditioned one.
    """
    m = mat.reshape(mat.shape[:-2] + (9, ))
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = torch.unbind(m, -1)
    # 4 * (w^2, x^2, y^2, z^2)
    squares = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    roots = squares.clamp(min=0).sqrt()  # 2|w|, 2|x|, 2|y|, 2|z|
    # Row k: 4 * q_k * (w, x, y, z)
    candidates = torch.stack([
        torch.stack([roots[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], -1),
        torch.stack([m21 - m12, roots[..., 1] ** 2, m10 + m01, m02 + m20], -1),
        torch.stack([m02 - m20, m10 + m01, roots[..., 2] ** 2, m12 + m21], -1),
        torch.stack([m10 - m01, m20 + m02, m21 + m12, roots[..., 3] ** 2], -1),
    ], -2) / (2.0 * roots.clamp(min=0.1))[..., None]
    best = roots.argmax(-1, keepdim=True)[..., None].expand(*roots.shape[:-1], 1, 4)
    wxyz = candidates.gather(-2, best).squeeze(-2)
    wxyz = torch.where(wxyz[..., :1] < 0, -wxyz, wxyz)
    return torch.cat([wxyz[..., 1:], wxyz[..., :1]], -1)


def encode_pose(extrinsics: Tensor, intrinsics: Tensor, image_size: Tuple[int, int]) -> Tensor:
    """``absT_quaR_FoV``: (..., 9) = translation (3), quaternion xyzw (4), FoV_h and FoV_w (2, radians)."""
    height, width = image_size
    fov_h = 2 * torch.atan((height / 2) / intrinsics[..., 1, 1])
    fov_w = 2 * torch.atan((width / 2) / intrinsics[..., 0, 0])
    return torch.cat([extrinsics[..., :3, 3], mat_to_quat(extrinsics[..., :3, :3]), fov_h[..., None],
                      fov_w[..., None]], dim=-1)


def decode_pose(encoding: Tensor, image_size: Tuple[int, int]) -> Tuple[Tensor, Tensor]:
    """Inverse of :func:`encode_pose`: extrinsics (..., 3, 4), intrinsics (..., 3, 3) with a centred principal point."""
    height, width = image_size
    extrinsics = torch.cat([quat_to_mat(encoding[..., 3:7]), encoding[..., :3, None]], dim=-1)
    intrinsics = torch.zeros(encoding.shape[:-1] + (3, 3), dtype=encoding.dtype, device=encoding.device)
    intrinsics[..., 0, 0] = (width / 2) / torch.tan(encoding[..., 8] / 2)
    intrinsics[..., 1, 1] = (height / 2) / torch.tan(encoding[..., 7] / 2)
    intrinsics[..., 0, 2], intrinsics[..., 1, 2], intrinsics[..., 2, 2] = width / 2, height / 2, 1.0
    return extrinsics, intrinsics


def to_homogeneous(extrinsics: Tensor) -> Tensor:
    """(..., 3, 4) -> (..., 4, 4)."""
    bottom = torch.zeros(extrinsics.shape[:-2] + (1, 4), dtype=extrinsics.dtype, device=extrinsics.device)
    bottom[..., 0, 3] = 1.0
    return torch.cat([extrinsics, bottom], dim=-2)


def normalize_to_first_frame(extrinsics: Tensor, intrinsics: Tensor, depth: Tensor,
                             valid: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Express a batch of sequences in frame 0's camera coordinates and divide by the scene scale.

    VGGT's ground-truth normalisation: extrinsics become relative to the first view, and translations and depths
    are divided by the mean distance of the valid depth points (unprojected, in frame-0 coordinates) to frame 0's
    centre, so every sequence has unit scale. Predictions are not normalised; the network learns this scale.

    Args:
        extrinsics: (B, S, 3, 4) world-to-camera.
        intrinsics: (B, S, 3, 3).
        depth: (B, S, H, W).
        valid: (B, S, H, W) bool.

    Returns:
        ``(extrinsics, depth, scale)``: normalised extrinsics (B, S, 3, 4) and depth, and the (B,) scales.
    """
    batch, frames, height, width = depth.shape
    world_from_cam = torch.linalg.inv(to_homogeneous(extrinsics.double()))
    first_from_cam = to_homogeneous(extrinsics[:, :1].double()) @ world_from_cam  # (B, S, 4, 4)
    rows, cols = torch.meshgrid(torch.arange(height, device=depth.device), torch.arange(width, device=depth.device),
                                indexing='ij')
    pixels = torch.stack([cols + 0.5, rows + 0.5, torch.ones_like(rows, dtype=torch.float64)], -1).double()
    rays = pixels.reshape(1, 1, -1, 3) @ torch.linalg.inv(intrinsics.double()).transpose(-1, -2)
    points = rays * depth.double().reshape(batch, frames, -1, 1)
    points = points @ first_from_cam[..., :3, :3].transpose(-1, -2) + first_from_cam[..., None, :3, 3]
    mask = valid.reshape(batch, frames, -1).double()
    distance = (points.norm(dim=-1) * mask).sum((1, 2)) / mask.sum((1, 2)).clamp(min=1)
    scale = torch.where(distance > 0, distance, torch.ones_like(distance))
    relative = torch.linalg.inv(first_from_cam)[..., :3, :]
    relative[..., 3] = relative[..., 3] / scale[:, None, None]
    return relative.to(extrinsics.dtype), depth / scale[:, None, None, None].to(depth.dtype), scale.to(depth.dtype)
