"""COLMAPMultiViewDataset: projected sparse depth vs synthetic ground truth, resizing, windows, splits, errors."""
import os

import numpy as np
import pytest
import torch

from opentad_lora.datasets.depth import COLMAPMultiViewDataset, read_model
from opentad_lora.datasets.depth.geometry import camera_intrinsics
from opentad_lora.datasets.depth.synthetic import DEPTH_DIR, SPARSE_DIR, make_synthetic_scene

HEIGHT, WIDTH = 30, 40


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('scenes')
    make_synthetic_scene(str(root), 'scene_a', num_frames=6, height=HEIGHT, width=WIDTH, points_per_image=80, seed=1)
    make_synthetic_scene(str(root), 'scene_b', num_frames=7, height=HEIGHT, width=WIDTH, points_per_image=80, seed=2)
    return str(root)


def _dataset(root, **kwargs):
    args = dict(num_views=3, img_size=(HEIGHT, WIDTH), model_format='.txt')
    args.update(kwargs)
    return COLMAPMultiViewDataset(root, **args)


def _raw_depth(root, scene, name):
    path = os.path.join(root, scene, DEPTH_DIR, os.path.basename(name))
    return np.fromfile(path, dtype='<f4').reshape(HEIGHT, WIDTH)


def test_sparse_depth_equals_ground_truth_at_the_seeded_pixel_centres(data_root):
    sparse = _dataset(data_root, scenes=['scene_a'], stride=3)
    model = read_model(os.path.join(data_root, 'scene_a', SPARSE_DIR))
    by_name = {im.name: im for im in model.images.values()}
    checked = 0
    for index in range(len(sparse)):
        sample = sparse[index]['data_samples']
        for view, name in enumerate(sample.frame_names):
            image = by_name[name]
            gt = _raw_depth(data_root, 'scene_a', name)
            depth, valid = sample.depth[view].numpy(), sample.valid_mask[view].numpy()
            assert np.array_equal(valid, depth > 0)
            # Keypoints at exact pixel centres are the points seeded from this very image: their depth is exact,
            # unless a nearer point lands in the same pixel (the z-buffer keeps the nearest, never a farther one).
            centred = np.all(np.abs(image.xys - np.floor(image.xys) - 0.5) < 1e-9, axis=1) & (image.point3D_ids >= 0)
            cols, rows = np.floor(image.xys[centred]).astype(int).T
            assert np.all(depth[rows, cols] <= gt[rows, cols] * (1 + 1e-6))
            observed = image.xys[image.point3D_ids >= 0]
            flat, counts = np.unique(np.floor(observed[:, 1]) * WIDTH + np.floor(observed[:, 0]), return_counts=True)
            alone = np.isin(rows * WIDTH + cols, flat[counts == 1])
            np.testing.assert_allclose(depth[rows[alone], cols[alone]], gt[rows[alone], cols[alone]], rtol=1e-5)
            checked += int(alone.sum())
            # Every other projected point lies on a surface seen in this pixel: it matches the pixel-centre depth up
            # to the surface slope across half a pixel (larger at depth edges).
            both = valid & np.isfinite(gt)
            rel = np.abs(depth[both] - gt[both]) / gt[both]
            assert np.median(rel) < 1e-2 and np.mean(rel < 0.05) > 0.9
    assert checked > 100


def test_resizing_scales_intrinsics_and_projection(data_root):
    native = _dataset(data_root, scenes=['scene_b'], depth_source='dense')[0]['data_samples']
    big_sparse = _dataset(data_root, scenes=['scene_b'], img_size=(2 * HEIGHT, 3 * WIDTH))[0]
    big_dense = _dataset(data_root, scenes=['scene_b'], img_size=(2 * HEIGHT, 3 * WIDTH), depth_source='dense')[0]
    assert big_sparse['inputs'].shape == (3, 3, 2 * HEIGHT, 3 * WIDTH)
    assert big_sparse['inputs'].min() >= 0 and big_sparse['inputs'].max() <= 1
    expected = native.intrinsics.clone()
    expected[:, 0] *= 3
    expected[:, 1] *= 2
    torch.testing.assert_close(big_sparse['data_samples'].intrinsics, expected)
    sparse, dense = big_sparse['data_samples'], big_dense['data_samples']
    both = sparse.valid_mask & dense.valid_mask
    rel = (sparse.depth[both] - dense.depth[both]).abs() / dense.depth[both]
    assert both.sum() > 100 and rel.median() < 1e-2


def test_dense_depth_is_the_eth3d_raw_file_with_inf_invalid(data_root):
    sample = _dataset(data_root, scenes=['scene_a'], depth_source='dense')[0]['data_samples']
    gt = _raw_depth(data_root, 'scene_a', sample.frame_names[0])
    assert np.isinf(gt).any()  # the synthetic rooms show some sky
    np.testing.assert_array_equal(sample.valid_mask[0].numpy(), np.isfinite(gt))
    np.testing.assert_array_equal(sample.depth[0].numpy(), np.where(np.isfinite(gt), gt, 0))
    model = read_model(os.path.join(data_root, 'scene_a', SPARSE_DIR))
    image = next(im for im in model.images.values() if im.name == sample.frame_names[0])
    np.testing.assert_allclose(sample.intrinsics[0].numpy(), camera_intrinsics(model.cameras[image.camera_id]),
                               rtol=1e-6)
    assert sample.extrinsics.shape == (3, 3, 4)


def test_windows_splits_and_random_sampling(data_root):
    full = _dataset(data_root)
    # scene_a: 6 frames -> starts 0, 1, 2, 3 (stride 1 = num_views // 2); scene_b: 7 frames -> 0..4.
    assert full.windows == [('scene_a', s) for s in range(4)] + [('scene_b', s) for s in range(5)]
    names = [f.name for f in full.frames['scene_b']]
    assert names == sorted(names)
    assert full[5]['data_samples'].frame_names == names[1:4]
    strided = _dataset(data_root, stride=3)
    assert strided.windows == [('scene_a', 0), ('scene_a', 3), ('scene_b', 0), ('scene_b', 3), ('scene_b', 4)]
    train = _dataset(data_root, split='train', train_ratio=0.5)
    val = _dataset(data_root, split='val', train_ratio=0.5)
    for scene in ('scene_a', 'scene_b'):
        train_names = {f.name for f in train.frames[scene]}
        val_names = {f.name for f in val.frames[scene]}
        assert not train_names & val_names and len(train_names | val_names) == len(full.frames[scene])
    randomised = _dataset(data_root, scenes=['scene_b'], sampling='random')
    for index, (_, start) in enumerate(randomised.windows):
        picked = randomised[index]['data_samples'].frame_names
        assert picked[0] == names[start] and len(set(picked)) == 3


def test_bad_inputs_name_the_file_or_option(data_root, tmp_path):
    with pytest.raises(ValueError, match='fewer than num_views'):
        _dataset(data_root, split='val', train_ratio=0.9)
    with pytest.raises(ValueError, match='depth_source'):
        _dataset(data_root, depth_source='lidar')
    with pytest.raises(FileNotFoundError, match='No scene'):
        COLMAPMultiViewDataset(str(tmp_path))
    dataset = _dataset(data_root, scenes=['scene_a'], depth_source='dense')
    frame = dataset.frames['scene_a'][0]
    frame.depth_path = str(tmp_path / 'short.bin')
    np.zeros(10, dtype='<f4').tofile(frame.depth_path)
    with pytest.raises(ValueError, match='short.bin: 10 float32 values'):
        dataset[0]
    frame.image_path = str(tmp_path / 'gone.png')
    with pytest.raises(FileNotFoundError, match='gone.png'):
        dataset[0]


def test_eth3d_occlusion_masks_remove_their_labelled_pixels(tmp_path):
    import cv2
    make_synthetic_scene(str(tmp_path), 'scene', num_frames=3, height=HEIGHT, width=WIDTH, points_per_image=80, seed=3)
    plain = _dataset(str(tmp_path), depth_source='dense')
    first, second = plain.frames['scene'][0], plain.frames['scene'][1]
    # ETH3D's layout: masks_for_images/dslr_images/<stem>.png at the camera's resolution (here 2x the output).
    mask = np.zeros((2 * HEIGHT, 2 * WIDTH), np.uint8)
    mask[4:30, 10:50] = 1
    mask[40:, 60:] = 2
    mask_dir = tmp_path / 'scene' / 'masks_for_images' / 'dslr_images'
    mask_dir.mkdir(parents=True)
    stem = os.path.splitext(os.path.basename(first.name))[0]
    assert cv2.imwrite(str(mask_dir / f'{stem}.png'), mask)
    masked = _dataset(str(tmp_path), depth_source='dense')
    assert masked.metainfo['masked_frames'] == 1 and plain.metainfo['masked_frames'] == 0
    before, after = plain[0]['data_samples'], masked[0]['data_samples']
    assert after.frame_names[:2] == [first.name, second.name]
    keep = mask[1::2, 1::2] == 0  # nearest resize samples the pixel centres
    assert (before.valid_mask[0].numpy() & ~keep).sum() > 100  # the mask does cover valid ground truth
    np.testing.assert_array_equal(after.valid_mask[0].numpy(), before.valid_mask[0].numpy() & keep)
    np.testing.assert_array_equal(after.depth[0].numpy(), np.where(keep, before.depth[0].numpy(), 0))
    assert torch.equal(after.valid_mask[1:], before.valid_mask[1:])  # frames without a mask file are unchanged
    sparse_before = _dataset(str(tmp_path), mask_dir=None)[0]['data_samples'].valid_mask[0].numpy()
    sparse_after = _dataset(str(tmp_path))[0]['data_samples'].valid_mask[0].numpy()
    np.testing.assert_array_equal(sparse_after, sparse_before & keep)
    assert cv2.imwrite(str(mask_dir / f'{stem}.png'), np.zeros((HEIGHT, WIDTH, 3), np.uint8))
    with pytest.raises(ValueError, match=f'{stem}.png: not a single-channel mask'):
        _dataset(str(tmp_path))[0]
