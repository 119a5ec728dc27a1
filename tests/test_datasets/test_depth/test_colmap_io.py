"""COLMAP text and binary models: identical content, a real-COLMAP cross-check, and errors that name the file."""
import os
import shutil

import numpy as np
import pytest

from opentad_lora.datasets.depth.colmap import (detect_model_format, read_cameras_text, read_images_binary,
                                                read_images_text, read_model, read_points3D_text)
from opentad_lora.datasets.depth.geometry import qvec_to_rotmat, rotmat_to_qvec
from opentad_lora.datasets.depth.synthetic import SPARSE_DIR, make_synthetic_scene


@pytest.fixture(scope='module')
def sparse_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp('colmap')
    return os.path.join(make_synthetic_scene(str(root), 'scene', num_frames=5, height=30, width=40,
                                             points_per_image=40, seed=3), SPARSE_DIR)


def test_text_and_binary_models_are_identical(sparse_dir):
    text, binary = read_model(sparse_dir, '.txt'), read_model(sparse_dir, '.bin')
    assert len(text.cameras) == 2 and len(text.images) == 5 and len(text.points3D) == 200
    assert text.cameras.keys() == binary.cameras.keys()
    for cam_id, cam in text.cameras.items():
        other = binary.cameras[cam_id]
        assert (cam.model, cam.width, cam.height) == (other.model, other.width, other.height)
        np.testing.assert_array_equal(cam.params, other.params)
    assert {c.model for c in text.cameras.values()} == {'PINHOLE', 'SIMPLE_PINHOLE'}
    for image_id, image in text.images.items():
        other = binary.images[image_id]
        assert (image.name, image.camera_id) == (other.name, other.camera_id)
        for field in ('qvec', 'tvec', 'xys', 'point3D_ids'):
            np.testing.assert_array_equal(getattr(image, field), getattr(other, field))
        assert (image.point3D_ids == -1).sum() == 10  # unmatched keypoints survive both formats
    for point_id, point in text.points3D.items():
        other = binary.points3D[point_id]
        assert point.error == other.error
        for field in ('xyz', 'rgb', 'image_ids', 'point2D_idxs'):
            np.testing.assert_array_equal(getattr(point, field), getattr(other, field))


def test_tracks_and_keypoints_are_consistent(sparse_dir):
    model = read_model(sparse_dir)
    for point in model.points3D.values():
        assert len(point.image_ids) >= 1
        for image_id, idx in zip(point.image_ids, point.point2D_idxs):
            assert model.images[int(image_id)].point3D_ids[idx] == point.id


def test_binary_model_matches_pycolmap(sparse_dir):
    pycolmap = pytest.importorskip('pycolmap')
    ours = read_model(sparse_dir, '.bin')
    theirs = pycolmap.Reconstruction(sparse_dir)
    assert theirs.num_images() == len(ours.images) and theirs.num_points3D() == len(ours.points3D)
    for cam_id, cam in ours.cameras.items():
        np.testing.assert_allclose(np.asarray(theirs.cameras[cam_id].params), cam.params)
    for image_id, image in ours.images.items():
        pose = theirs.images[image_id].cam_from_world()
        np.testing.assert_allclose(np.asarray(pose.rotation.matrix()), qvec_to_rotmat(image.qvec), atol=1e-12)
        np.testing.assert_allclose(np.asarray(pose.translation), image.tvec, atol=1e-12)
    for point_id, point in ours.points3D.items():
        np.testing.assert_allclose(np.asarray(theirs.points3D[point_id].xyz), point.xyz)


def test_quaternion_round_trip():
    rng = np.random.default_rng(0)
    for qvec in rng.normal(size=(50, 4)):
        qvec = qvec / np.linalg.norm(qvec) * np.sign(qvec[0])
        rot = qvec_to_rotmat(qvec)
        np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)
        np.testing.assert_allclose(rotmat_to_qvec(rot), qvec, atol=1e-10)


def test_auto_format_prefers_binary_and_falls_back_to_text(sparse_dir, tmp_path):
    assert detect_model_format(sparse_dir) == '.bin'
    text_only = tmp_path / 'text'
    text_only.mkdir()
    for name in ('cameras', 'images', 'points3D'):
        shutil.copy(os.path.join(sparse_dir, name + '.txt'), text_only)
    assert detect_model_format(str(text_only)) == '.txt'
    with pytest.raises(FileNotFoundError, match='No complete COLMAP model'):
        detect_model_format(str(tmp_path))


def test_missing_and_corrupt_files_are_named(sparse_dir, tmp_path):
    missing = str(tmp_path / 'points3D.txt')
    with pytest.raises(FileNotFoundError, match='points3D.txt'):
        read_points3D_text(missing)
    truncated = tmp_path / 'images.bin'
    truncated.write_bytes(open(os.path.join(sparse_dir, 'images.bin'), 'rb').read()[:-7])
    with pytest.raises(ValueError, match=r'images\.bin: corrupt or truncated'):
        read_images_binary(str(truncated))
    bad_camera = tmp_path / 'cameras.txt'
    bad_camera.write_text('# comment\n1 PINHOLE 40 30 1.0 2.0\n')
    with pytest.raises(ValueError, match=r'cameras\.txt:2: .*PINHOLE needs 4 parameters'):
        read_cameras_text(str(bad_camera))
    bad_points = tmp_path / 'images_bad.txt'
    bad_points.write_text('1 1 0 0 0 0 0 0 1 a.png\n1.0 2.0\n')
    with pytest.raises(ValueError, match=r'images_bad\.txt:2: .*triplets'):
        read_images_text(str(bad_points))
