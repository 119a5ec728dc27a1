"""HaMeR end to end on tiny synthetic data: the data tools, two adversarial Runner iterations, the LoRA table and
the demo (overlay/side-view PNGs and .obj meshes read back)."""
from pathlib import Path

import cv2
import numpy as np
import pytest
from mmengine.config import Config
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
