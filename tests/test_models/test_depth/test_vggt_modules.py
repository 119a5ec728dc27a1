"""VGGT building blocks: RoPE-2D, aggregator, DPT and camera heads, pose maths, losses, the estimator's modes."""
import math

import pytest
import torch
import torch.nn.functional as F

import opentad_lora.models  # noqa: F401
from opentad_lora.models.depth import (CameraHead, DinoV2PatchEmbed, DPTHeadLoRA, VGGTAggregator, VGGTDepthCameraLoss,
                                       decode_pose, encode_pose, mat_to_quat, normalize_to_first_frame, quat_to_mat)
from opentad_lora.models.depth.dpt_head import ResidualConvUnit
from opentad_lora.models.depth.losses import filter_by_quantile, gradient_loss
from opentad_lora.models.depth.rope import RotaryPositionEmbedding2D, patch_positions
from opentad_lora.models.layers import resize_pos_embed
from opentad_lora.registry import MODELS

TINY = dict(img_size=28, patch_size=14, embed_dim=16, depth=2, num_heads=2, mlp_ratio=2.0, patch_embed='conv')


def _random_rotations(n):
    return quat_to_mat(torch.randn(n, 4, dtype=torch.float64))


def test_rope_scores_depend_on_relative_positions_only():
    rope = RotaryPositionEmbedding2D(100)
    q, k = torch.randn(2, 3, 6, 8), torch.randn(2, 3, 6, 8)
    pos = torch.randint(0, 20, (2, 6, 2))
    scores = rope(q, pos) @ rope(k, pos).transpose(-1, -2)
    shifted = pos + torch.tensor([7, 3])
    torch.testing.assert_close(rope(q, shifted) @ rope(k, shifted).transpose(-1, -2), scores, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(rope(q, pos).norm(dim=-1), q.norm(dim=-1))
    torch.testing.assert_close(rope(q, torch.zeros_like(pos)), q)  # the special tokens' position (0, 0)
    positions = patch_positions(1, 2, 3, 5, torch.device('cpu'))
    assert positions[0, :5].abs().sum() == 0
    assert positions[0, 5:].tolist() == [[1, 1], [1, 2], [1, 3], [2, 1], [2, 2], [2, 3]]


def test_aggregator_outputs_and_reference_frame():
    model = VGGTAggregator(**TINY).eval()
    with torch.no_grad():
        model.camera_token[:, 0] += 1.0  # make the reference slot clearly different from the others'
    images = torch.rand(2, 4, 3, 28, 42)
    with torch.no_grad():
        outputs, start = model(images)
        kept, _ = model(images, out_indices=[-1])
        perm = [0, 2, 3, 1]
        permuted, _ = model(images[:, perm])
        swapped, _ = model(images[:, [1, 0, 2, 3]])
    assert start == 5 and len(outputs) == 2
    assert outputs[-1].shape == (2, 4, 5 + 2 * 3, 32)
    assert kept[0] is None and torch.equal(kept[1], outputs[1])
    # Frames after the first are interchangeable: permuting them permutes the outputs.
    torch.testing.assert_close(permuted[-1], outputs[-1][:, perm], rtol=1e-4, atol=1e-5)
    # The first frame is the reference (its own camera/register tokens): swapping it changes the result.
    assert not torch.allclose(swapped[-1][:, 0], outputs[-1][:, 1], atol=1e-3)
    with pytest.raises(ValueError, match='multiples of 14'):
        model(torch.rand(1, 2, 3, 28, 30))


def test_dinov2_patch_embedding_resizes_its_position_table():
    model = VGGTAggregator(**dict(TINY, patch_embed=dict(depth=1, num_heads=2))).eval()
    assert model.patch_embed.pos_embed.shape == (1, 1 + 4, 16)
    with torch.no_grad():
        outputs, _ = model(torch.rand(1, 2, 3, 42, 56))
    assert outputs[-1].shape == (1, 2, 5 + 12, 32)
    with pytest.raises(ValueError, match='must equal embed_dim'):
        VGGTAggregator(**dict(TINY, patch_embed=dict(embed_dim=8, depth=1, num_heads=2)))


def test_dinov2_position_table_resize_is_vggts_antialiased_bicubic():
    """VGGT builds its DINOv2 with interpolate_antialias=True, interpolate_offset=0: the grid part of the table goes
    through F.interpolate(size=token grid, mode='bicubic', antialias=True) in float32; prefix slots stay."""
    torch.manual_seed(0)
    embed = DinoV2PatchEmbed(img_size=56, patch_size=14, embed_dim=8, depth=0, num_heads=2).eval()
    with torch.no_grad():
        embed.pos_embed.normal_()
    images = torch.randn(2, 3, 42, 70)  # 3x5 tokens from the stored 4x4: rows shrink, columns grow
    grid = embed.pos_embed[:, 1:].reshape(1, 4, 4, 8).permute(0, 3, 1, 2)
    with torch.no_grad():
        out = embed(images)
        patches = embed.patch_embed(images)

    def expected(antialias):
        table = F.interpolate(grid, size=(3, 5), mode='bicubic', align_corners=False, antialias=antialias)
        return embed.norm(patches + table.permute(0, 2, 3, 1).reshape(1, 15, 8))

    with torch.no_grad():
        torch.testing.assert_close(out, expected(True), rtol=0, atol=1e-6)
        assert (out - expected(False)).abs().max() > 1e-3  # the plain bicubic table would be another input
    same = resize_pos_embed(embed.pos_embed, (4, 4), (4, 4), num_prefix_tokens=1, antialias=True)
    assert same is embed.pos_embed  # the stored size is used as it is


def test_dpt_and_camera_heads():
    tokens = [torch.randn(2, 3, 5 + 6, 32) for _ in range(4)]
    head = DPTHeadLoRA(dim_in=32, features=16, out_channels=[8, 16, 32, 32], intermediate_layer_idx=[0, 1, 2, 3],
                       frames_chunk_size=2)
    depth, conf = head(tokens, (28, 42), 5)
    assert depth.shape == (2, 3, 28, 42, 1) and conf.shape == (2, 3, 28, 42)
    assert depth.min() > 0 and conf.min() > 1  # exp and 1 + exp
    head.frames_chunk_size = None
    torch.testing.assert_close(head(tokens, (28, 42), 5)[0], depth)  # chunking over frames changes nothing
    camera = CameraHead(dim_in=32, trunk_depth=1, num_heads=2, num_iterations=3)
    poses = camera(tokens)
    assert len(poses) == 3 and poses[-1].shape == (2, 3, 9) and poses[-1][..., 7:].min() >= 0


def test_residual_unit_skips_the_activated_input():
    unit = ResidualConvUnit(4)
    for conv in (unit.conv1, unit.conv2):
        torch.nn.init.zeros_(conv.weight)
        torch.nn.init.zeros_(conv.bias)
    x = torch.randn(1, 4, 5, 5)
    torch.testing.assert_close(unit(x), torch.relu(x))


def test_quaternions_and_pose_encoding_round_trip():
    rot = _random_rotations(64)
    rot = torch.cat([rot, torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))[None]])  # 180 degrees
    quat = mat_to_quat(rot)
    assert torch.all(quat[:, 3] >= 0)
    torch.testing.assert_close(quat.norm(dim=-1), torch.ones(65, dtype=torch.float64))
    torch.testing.assert_close(quat_to_mat(quat), rot)
    extrinsics = torch.cat([rot, torch.randn(65, 3, 1, dtype=torch.float64)], dim=-1)
    intrinsics = torch.tensor([[1.0, 0, 3], [0, 1.0, 1], [0, 0, 1]], dtype=torch.float64).expand(65, 3, 3)
    encoding = encode_pose(extrinsics, intrinsics, (2, 6))
    assert encoding[0, 7] == pytest.approx(math.pi / 2) and encoding[0, 8] == pytest.approx(2 * math.atan(3))
    ext, intr = decode_pose(encoding, (2, 6))
    torch.testing.assert_close(ext, extrinsics)
    torch.testing.assert_close(intr, intrinsics)


def test_first_frame_normalisation_is_invariant_to_the_world_frame():
    batch, frames, height, width = 2, 3, 4, 5
    rot = _random_rotations(batch * frames).reshape(batch, frames, 3, 3)
    trans = torch.randn(batch, frames, 3, dtype=torch.float64)
    extrinsics = torch.cat([rot, trans[..., None]], dim=-1)
    intrinsics = torch.tensor([[4.0, 0, 2.5], [0, 4.0, 2.0], [0, 0, 1]], dtype=torch.float64).expand(
        batch, frames, 3, 3)
    depth = torch.rand(batch, frames, height, width, dtype=torch.float64) + 1
    valid = torch.rand(batch, frames, height, width) > 0.2
    ext_n, depth_n, scale = normalize_to_first_frame(extrinsics, intrinsics, depth, valid)
    torch.testing.assert_close(ext_n[:, 0], torch.eye(3, 4, dtype=torch.float64).expand(batch, 3, 4))
    # A similarity change of the world (X' = s R X + T) scales camera depths by s and must not change the result.
    s, world_rot, world_t = 3.0, _random_rotations(1)[0], torch.randn(3, dtype=torch.float64)
    new_rot = rot @ world_rot.T
    new_trans = s * trans - (new_rot @ world_t[:, None])[..., 0]
    moved = normalize_to_first_frame(torch.cat([new_rot, new_trans[..., None]], -1), intrinsics, depth * s, valid)
    torch.testing.assert_close(moved[0], ext_n)
    torch.testing.assert_close(moved[1], depth_n)
    torch.testing.assert_close(moved[2], scale * s)


def test_loss_terms_by_hand():
    loss = VGGTDepthCameraLoss(camera_weight=2.0, depth_weight=5.0, valid_range=0.98, min_valid_points=10)
    gt = torch.rand(1, 2, 6, 7) + 1
    valid = torch.ones(1, 2, 6, 7, dtype=torch.bool)
    out = loss.depth_loss(gt + 0.5, torch.ones_like(gt), gt, valid)  # constant error, confidence 1
    assert float(out['loss_reg_depth']) == pytest.approx(5 * 0.5)
    assert float(out['loss_conf_depth']) == pytest.approx(5 * 0.5)  # 1 * 0.5 * 1 - 0.2 * log(1)
    assert float(out['loss_grad_depth']) == pytest.approx(0.0, abs=1e-6)  # a constant offset has no gradient
    conf = torch.full_like(gt, math.e)
    assert float(loss.depth_loss(gt + 0.5, conf, gt, valid)['loss_conf_depth']) == pytest.approx(
        5 * (0.5 * math.e - 0.2))
    few = loss.depth_loss(gt + 0.5, conf, gt, torch.zeros_like(valid))
    assert all(float(v) == 0 for v in few.values())
    # gradient loss of a column ramp: every horizontal pair differs by 1, per valid pixel (W-1)/W.
    ramp = torch.arange(7.0).expand(1, 6, 7)
    assert float(gradient_loss(ramp, torch.zeros_like(ramp), torch.ones_like(ramp, dtype=torch.bool))) == \
        pytest.approx(6 / 7)
    # camera loss: stage errors 1 (first) and 0.5 (last), gamma 0.6 -> (0.6 * 1 + 0.5) / 2 per part.
    gt_pose = torch.zeros(1, 2, 9)
    stages = [torch.ones(1, 2, 9), torch.full((1, 2, 9), 0.5)]
    cam = loss.camera_loss(stages, gt_pose, valid)
    part = (0.6 * 1 + 0.5) / 2
    assert float(cam['cam_T']) == pytest.approx(part) and float(cam['cam_FoV']) == pytest.approx(part)
    assert float(cam['loss_camera']) == pytest.approx(2.0 * part * (1 + 1 + 0.5))


def test_quantile_filter_drops_the_top_two_percent():
    values = torch.randperm(2000).double() / 1000  # 0, 0.001, ..., 1.999
    kept = filter_by_quantile(values, 0.98, min_elements=1000)
    assert kept.numel() == 1959 and float(kept.max()) == pytest.approx(1.958)
    assert filter_by_quantile(values[:500], 0.98, min_elements=1000).numel() == 500
    clamped = filter_by_quantile(values * 100, 0.98, min_elements=1000, hard_max=100.0)
    assert float(clamped.max()) == 100.0 and clamped.numel() == 2000  # too few values would survive the cut


def test_estimator_modes_and_gradients_reach_only_lora():
    model = MODELS.build(dict(
        type='DepthEstimator', aggregator=dict(type='VGGTAggregator', **dict(TINY, depth=4)),
        depth_head=dict(type='DPTHeadLoRA', features=16, out_channels=[8, 16, 32, 32],
                        intermediate_layer_idx=[0, 1, 2, 3]),
        camera_head=dict(type='CameraHead', trunk_depth=1, num_heads=2, num_iterations=2),
        loss=dict(type='VGGTDepthCameraLoss', min_valid_points=10),
        lora=dict(r=4, alpha=8, targets=['depth_head.projects.0-3', 'aggregator.global_blocks.2-3.*.qkv'])))
    images = torch.rand(1, 2, 3, 28, 28)
    rot = _random_rotations(2).float()
    sample = dict(depth=torch.rand(2, 28, 28) + 1, valid_mask=torch.rand(2, 28, 28) > 0.3,
                  extrinsics=torch.cat([rot, torch.randn(2, 3, 1)], -1),
                  intrinsics=torch.tensor([[30.0, 0, 14], [0, 30.0, 14], [0, 0, 1]]).expand(2, 3, 3),
                  scene='s', frame_names=['a', 'b'])
    losses = model(list(images), [sample], mode='loss')
    assert set(losses) >= {'loss_conf_depth', 'loss_reg_depth', 'loss_grad_depth', 'loss_camera'}
    sum(v for k, v in losses.items() if k.startswith('loss')).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad and all('.lora_' in n for n in with_grad)
    assert any(n.startswith('aggregator.global_blocks.2.') for n in with_grad)
    model.eval()
    with torch.no_grad():
        result = model(images, [sample], mode='predict')[0]
    assert result['pred_depth'].shape == (2, 28, 28) and result['pose_enc'].shape == (2, 9)
    assert result['scene'] == 's' and result['frame_names'] == ['a', 'b']
    assert torch.equal(result['gt_depth'], sample['depth'])
    # The validation loss of predict is the training loss of the same batch (the seed's "Val Loss").
    with torch.no_grad():
        expected = sum(v for k, v in model(images, [sample], mode='loss').items() if 'loss' in k)
    assert result['val_loss'] == pytest.approx(float(expected), rel=1e-6) and result['val_loss'] > 0
    no_cameras = {k: v for k, v in sample.items() if k not in ('extrinsics', 'intrinsics')}
    with torch.no_grad():
        assert 'val_loss' not in model(images, [no_cameras], mode='predict')[0]  # nothing to score it against
