"""HaMeR end to end on tiny synthetic data: the data tools, two adversarial Runner iterations, the LoRA table and
the demo (overlay/side-view PNGs and .obj meshes read back)."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import Runner

import opentad_lora.datasets  # noqa: F401  (registers everything the config names)
import opentad_lora.evaluation  # noqa: F401
import opentad_lora.models  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / 'configs' / 'hamer' / 'hamer_tiny_lora_synthetic.py'
NUM_VERTS, NUM_FACES = 778, 1538


def read_obj(path: Path):
    """Parse ``v`` and ``f`` lines of a Wavefront OBJ."""
    verts, faces = [], []
    for line in path.read_text().splitlines():
        kind, *values = line.split()
        if kind == 'v':
            verts.append([float(v) for v in values])
        elif kind == 'f':
            faces.append([int(v.split('/')[0]) for v in values])
    return np.array(verts), np.array(faces)


@pytest.fixture(scope='module')
def trained(tmp_path_factory, load_tool):
    """Synthetic MANO + hands + stand-in HaMeR checkpoint (the data tools), then 2 iterations in the Runner."""
    tmp = tmp_path_factory.mktemp('hamer')
    data = tmp / 'data'
    mano = data / 'MANO_RIGHT.pkl'
    cfg = Config.fromfile(str(CONFIG))
    cfg.merge_from_dict({
        'model.backbone': dict(embed_dim=32, depth=1, num_heads=2),
        'model.mano_head': dict(context_dim=32, dim=32, depth=1, heads=2, dim_head=16, mlp_dim=32),
        'model.discriminator.fc_dim': 32, 'model.mano.model_path': str(mano),
        'model.pretrained_model_path': str(data / 'hamer_tiny_init.ckpt'),
        'train_dataloader.batch_size': 2, 'val_dataloader.batch_size': 2, 'test_dataloader.batch_size': 2,
        'train_cfg.max_iters': 2, 'train_cfg.val_interval': 2, 'default_hooks.checkpoint.interval': 2,
        'default_hooks.logger.interval': 1, 'custom_hooks': [dict(type='LoRACheckpointHook', interval=1)],
        'work_dir': str(tmp / 'work'), 'experiment_name': 'hamer_tiny_test'})
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.update(data_root=str(data), mano_model_path=str(mano))
    cfg.train_dataloader.dataset.mocap_file = str(data / 'mocap.npz')
    cfg.dump(str(tmp / 'config.py'))
    load_tool('data/make_synthetic_mano').main([str(mano)])
    load_tool('data/make_synthetic_hands').main([str(data), '--mano', str(mano), '--num-train', '4', '--num-val',
                                                 '2', '--image-size', '96', '--init-checkpoint',
                                                 str(tmp / 'config.py')])
    Runner.from_cfg(cfg).train()
    return tmp


def test_runner_trains_adversarially_and_saves_lora_weights_and_best_checkpoint(trained):
    work = trained / 'work'
    for name in ('lora_weights_step_000001', 'lora_weights_step_000002', 'final_lora_weights'):
        assert (work / name / 'adapter_model.safetensors').is_file(), name
    assert len(list(work.glob('best_hand_PA-MPJPE_iter_2.pth'))) == 1
    assert list(work.glob('*/vis_data/events.out.tfevents.*')), 'no TensorBoard events'
    log = next(work.glob('*/vis_data/scalars.json')).read_text()
    assert '"loss_disc"' in log and '"generator.lr"' in log and '"hand/PA-MPJPE"' in log


def test_print_lora_info_lists_the_seed_modules(trained, load_tool, capsys):
    text = load_tool('print_lora_info').main([str(trained / 'config.py')])
    for name in ('backbone.blocks.0.attn.qkv', 'mano_head.transformer.transformer.layers.0.1.fn.to_kv',
                 'mano_head.deccam', 'discriminator.D_conv1', 'discriminator.D_alljoints_fc2'):
        assert name in text
    assert 'trainable params' in capsys.readouterr().out


def test_demo_writes_pngs_and_readable_meshes_and_mirrors_left_hands(trained, load_tool, tmp_path):
    images = tmp_path / 'images'
    images.mkdir()
    image = cv2.imread(str(trained / 'data' / 'evaluation' / 'rgb' / '00000000.png'))
    cv2.imwrite(str(images / 'right.png'), image)
    cv2.imwrite(str(images / 'left.png'), image[:, ::-1])
    boxes = tmp_path / 'boxes.json'
    boxes.write_text('{"right.png": [[0, 0, 95, 95, 1]], "left.png": [[0, 0, 95, 95, 0]]}')
    out = tmp_path / 'out'
    load_tool('demo_hamer').main([str(images), '--checkpoint', str(trained / 'work' / 'iter_2.pth'), '--boxes',
                                  str(boxes), '--rescale', '1.0', '--out-dir', str(out), '--save-mesh',
                                  '--side-view', '--device', 'cpu'])
    for name in ('right_overlay.png', 'left_overlay.png', 'right_0_side.png', 'left_0_side.png'):
        assert cv2.imread(str(out / name)).shape == (96, 96, 3), name
    right_v, right_f = read_obj(out / 'right_0.obj')
    left_v, left_f = read_obj(out / 'left_0.obj')
    assert right_v.shape == (NUM_VERTS, 3) and right_f.shape == (NUM_FACES, 3)
    assert right_f.min() == 1 and right_f.max() == NUM_VERTS and np.isfinite(right_v).all()
    # The mirrored image through the left-hand path gives the mirrored mesh, faces with flipped winding.
    np.testing.assert_allclose(left_v * [-1, 1, 1], right_v, atol=1e-4 * np.abs(right_v).max())
    np.testing.assert_array_equal(left_f, right_f[:, ::-1])
    # Overlays differ from the input only where the mesh was drawn.
    assert not np.array_equal(cv2.imread(str(out / 'right_overlay.png')), image)


def _fit_crop_camera(joints: torch.Tensor, keypoints_2d: torch.Tensor) -> torch.Tensor:
    """Least-squares weak-perspective camera ``(s, tx, ty)`` with ``kp = s / 2 * (xy + t)`` (HaMeR's crop camera:
    focal f/256 at depth 2f/(256 s) scales by s/2)."""
    n = len(joints)
    design = torch.zeros(2 * n, 3, dtype=torch.float64)
    design[:n, 0], design[:n, 1] = joints[:, 0], 1.0
    design[n:, 0], design[n:, 2] = joints[:, 1], 1.0
    target = torch.cat([keypoints_2d[:, 0], keypoints_2d[:, 1]])
    a, b, c = torch.linalg.lstsq(design, target[:, None]).solution[:, 0]
    return torch.stack([2 * a, b / a, c / a])[None]


def test_demo_camera_puts_ground_truth_hands_where_the_image_has_them(trained, load_tool):
    """Ground-truth MANO parameters + the crop camera they imply, through the demo's placement and rendering: the
    overlay covers the hand's pixels in the image, the mesh keeps its metric size, and the depth is the true one
    with the true focal length (HaMeR's default focal scales it by default focal / true focal)."""
    from opentad_lora.models.hamer import MANOLayer, cam_to_translation, perspective_projection
    from opentad_lora.models.hamer.renderer import render_mesh
    from opentad_lora.registry import DATASETS
    demo = load_tool('demo_hamer')
    init_default_scope('opentad_lora')
    cfg = Config.fromfile(str(trained / 'config.py'))
    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    mano = MANOLayer(model_path=str(trained / 'data' / 'MANO_RIGHT.pkl'))
    for index in range(len(dataset)):
        info = dataset.get_data_info(index)
        image = cv2.imread(info['img_path'])
        sample = dataset[index]['data_samples']
        with torch.no_grad():
            hand = mano(sample['global_orient'][None], sample['hand_pose'][None], sample['betas'][None])
        cam = _fit_crop_camera(hand['joints'][0].double(), sample['keypoints_2d'][:, :2].double())
        # The training targets agree with the model's camera: projecting through it lands on them (1% of the crop on
        # average; up to 3% where the wide true lens has perspective the crop camera does not model).
        projected = perspective_projection(hand['joints'].double(), cam_to_translation(cam, 5000.0, 256),
                                           torch.full((1, 2), 5000.0 / 256, dtype=torch.float64))[0]
        error = (projected - sample['keypoints_2d'][:, :2]).abs()
        assert error.mean() < 0.01 and error.max() < 0.03
        assert 2.0 < float(cam[0, 0]) < 20.0  # a hand filling half the crop: s = 2 * 0.5 / ~0.18 m
        crop = [(sample['box_center'].numpy(), float(sample['box_size']), True)]
        gt_vertices, K = sample['vertices'].double().numpy(), sample['K'].double().numpy()
        _, gt_mask = render_mesh(gt_vertices, mano.faces, K, image.shape[:2])
        # HaMeR's default focal (a narrow lens, like the crop camera): the overlay matches the hand's pixels and the
        # depth is the true one scaled by default / true focal. The true (wide, ~2.2x the width) lens: the depth is
        # about the true one; the weak-perspective crop camera then misses some perspective, so overlap is looser.
        default_focal = 5000.0 / 256 * max(image.shape[:2])
        for focal, min_iou, depth_rtol in ((default_focal, 0.8, 0.1), (float(K[0, 0]), 0.65, 0.2)):
            placed = demo.place_hands(cam.float(), hand['vertices'], mano.faces, crop, image.shape[:2], focal)
            overlay, masks, _ = demo.draw_hands(image, placed)
            vertices = placed[0]['vertices']
            np.testing.assert_allclose(vertices - vertices.mean(0), gt_vertices - gt_vertices.mean(0), atol=1e-4)
            iou = (masks[0] & gt_mask).sum() / (masks[0] | gt_mask).sum()
            assert iou > min_iou and 0.75 < masks[0].sum() / gt_mask.sum() < 1.33, (index, focal, iou)
            assert not np.array_equal(overlay[gt_mask], image[gt_mask])
            depth_ratio = vertices[:, 2].mean() / gt_vertices[:, 2].mean()
            np.testing.assert_allclose(depth_ratio, focal / K[0, 0], rtol=depth_rtol)
