"""Rotation/camera maths and the MANO head's outputs."""
import cv2
import numpy as np
import pytest
import torch

from opentad_lora.models.hamer import (HaMeRDiscriminator, MANOTransformerDecoderHead, aa_to_rotmat,
                                       cam_crop_to_full, cam_to_translation, perspective_projection,
                                       rot6d_to_rotmat)


def assert_rotations(rot: torch.Tensor, atol: float = 1e-5) -> None:
    eye = torch.eye(3).expand_as(rot)
    torch.testing.assert_close(rot @ rot.transpose(-1, -2), eye, atol=atol, rtol=0)
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(rot.shape[:-2]), atol=atol, rtol=0)


def test_rot6d_gram_schmidt_by_hand():
    # a1 = (2, 0, 0), a2 = (1, 3, 0): b1 = x, b2 = y, b3 = z -> identity; then a rotation about z by 90 degrees.
    rot = rot6d_to_rotmat(torch.tensor([[2.0, 0, 0, 1, 3, 0], [0, 5, 0, -1, 0, 0]]))
    torch.testing.assert_close(rot[0], torch.eye(3))
    torch.testing.assert_close(rot[1], torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]))


def test_rot6d_of_random_input_is_a_rotation():
    assert_rotations(rot6d_to_rotmat(torch.randn(64, 6) * 3))


def test_aa_to_rotmat_matches_opencv_rodrigues_and_is_exact_at_zero():
    aa = torch.randn(20, 3, dtype=torch.float64)
    aa[0] = 0.0
    aa[1] = torch.tensor([1e-6, 0, 0])
    expected = np.stack([cv2.Rodrigues(v.numpy())[0] for v in aa])
    torch.testing.assert_close(aa_to_rotmat(aa), torch.from_numpy(expected), atol=1e-12, rtol=0)


def test_head_outputs_valid_rotations_and_residuals_on_the_mean():
    head = MANOTransformerDecoderHead(context_dim=16, dim=32, depth=1, heads=2, dim_head=8, mlp_dim=32,
                                      default_cam=(4.0, 0.1, -0.2)).eval()
    feats = torch.randn(3, 16, 4, 3)  # (B, C, H, W) feature map
    out = head(feats)
    assert out['global_orient'].shape == (3, 1, 3, 3) and out['hand_pose'].shape == (3, 15, 3, 3)
    assert_rotations(torch.cat([out['global_orient'], out['hand_pose']], 1))
    # Zeroed read-outs leave exactly the mean: identity rotations, zero betas, the default camera.
    for layer in (head.decpose, head.decshape, head.deccam):
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    out = head(feats.flatten(2).transpose(1, 2))  # the same as tokens (B, N, C)
    torch.testing.assert_close(out['hand_pose'], torch.eye(3).expand(3, 15, 3, 3))
    torch.testing.assert_close(out['betas'], torch.zeros(3, 10))
    torch.testing.assert_close(out['pred_cam'], torch.tensor([[4.0, 0.1, -0.2]]).expand(3, 3))


def test_head_reads_mean_params_npz(tmp_path):
    pose = np.tile([0.0, 1, 0, -1, 0, 0], 16)  # every joint: 90 degrees about z
    np.savez(tmp_path / 'mean.npz', pose=pose, shape=np.arange(10.0), cam=np.array([3.0, 0, 0]))
    head = MANOTransformerDecoderHead(context_dim=8, dim=16, depth=1, heads=2, dim_head=8, mlp_dim=16,
                                      mean_params=str(tmp_path / 'mean.npz'))
    torch.testing.assert_close(head.init_betas, torch.arange(10.0)[None])
    np.savez(tmp_path / 'bad.npz', pose=pose[:90], shape=np.zeros(10), cam=np.zeros(3))
    with pytest.raises(ValueError, match="'pose' has 90 values"):
        MANOTransformerDecoderHead(context_dim=8, dim=16, depth=1, heads=2, dim_head=8, mlp_dim=16,
                                   mean_params=str(tmp_path / 'bad.npz'))


def test_discriminator_scores_17_per_sample():
    disc = HaMeRDiscriminator(fc_dim=16)
    assert disc(aa_to_rotmat(torch.randn(4, 15, 3)), torch.randn(4, 10)).shape == (4, 17)


def test_crop_camera_to_full_image_camera_projects_to_the_same_pixels():
    """A point seen through the crop camera lands on the same full-image pixel through the full camera."""
    image_size, focal = 256, 5000.0
    cam = torch.tensor([[4.5, 0.02, -0.03]])
    box_center, box_size = torch.tensor([[300.0, 180.0]]), torch.tensor([120.0])
    full_wh = torch.tensor([[640.0, 480.0]])
    full_focal = torch.tensor([focal / image_size * 640.0])
    points = torch.randn(1, 5, 3) * 0.05
    crop_t = cam_to_translation(cam, focal, image_size)
    crop_uv = perspective_projection(points, crop_t, torch.full((1, 2), focal / image_size))  # in [-0.5, 0.5]
    expected = box_center[:, None] + crop_uv * box_size  # crop coordinates -> full-image pixels
    full_t = cam_crop_to_full(cam, box_center, box_size, full_wh / 2, full_focal)
    full_uv = perspective_projection(points, full_t, full_focal[:, None].expand(1, 2), full_wh / 2)
    # Exact at the hand's origin; elsewhere equal up to the depth-ratio term (Z / depth ~ 0.5 %), < 0.5 px here.
    torch.testing.assert_close(full_uv, expected, atol=0.5, rtol=0)
    origin = torch.zeros(1, 1, 3)
    torch.testing.assert_close(
        perspective_projection(origin, full_t, full_focal[:, None].expand(1, 2), full_wh / 2),
        box_center[:, None] + perspective_projection(origin, crop_t, torch.full((1, 2), focal / image_size))
        * box_size, atol=1e-3, rtol=0)
