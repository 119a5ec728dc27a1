"""Synthetic CAD data: analytic surfaces, real file formats, furthest point sampling, tokenisation, the dataset."""
import json

import numpy as np
import pytest
import torch
from mmengine.registry import init_default_scope

from opentad_lora.datasets.cad import (SHAPE_MAKERS, CADCodeTokenizer, CADRecodeDataset, PointCloudNoise,
                                       farthest_point_sampling, fit_to_cube, programs_to_dataset, random_shape,
                                       read_mesh, read_points, write_mesh, write_points, write_synthetic_dataset)
from opentad_lora.datasets.cad.synthetic import make_box, make_tube


@pytest.fixture(scope='module')
def dataset_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp('synthetic_cad')
    return write_synthetic_dataset(root, dict(train=6, val=2), seed=3, num_surface_points=1024, tokenizer_vocab=320)


def test_box_samples_lie_on_its_faces_and_area_matches():
    rng = np.random.default_rng(0)
    shape = make_box(rng)
    a, b, c = (float(v) for v in shape.code[shape.code.index('box(') + 4:shape.code.index(')\n')].split(','))
    assert shape.area == pytest.approx(2 * (a * b + b * c + c * a))
    points = shape.sample_surface(4000, rng) / np.array([a / 2, b / 2, c / 2])
    assert np.abs(points).max(1) == pytest.approx(np.ones(4000), abs=1e-5)  # on the boundary of the box
    assert max(a, b, c) == 200


def test_tube_samples_lie_on_its_walls_and_rings():
    rng = np.random.default_rng(1)
    shape = make_tube(rng)
    outer, inner = (int(v) for v in shape.code.split('.circle(')[1:3] for v in [v.split(')')[0]])
    height = int(shape.code.split('.extrude(')[1].split(')')[0])
    points = shape.sample_surface(4000, rng).astype(np.float64)
    radius = np.hypot(points[:, 0], points[:, 1])
    on_wall = np.isclose(radius, outer, atol=1e-3) | np.isclose(radius, inner, atol=1e-3)
    on_cap = np.isclose(np.abs(points[:, 2]), height / 2) & (radius <= outer + 1e-3) & (radius >= inner - 1e-3)
    assert np.all(on_wall | on_cap)
    caps = 2 * np.pi * (outer ** 2 - inner ** 2)
    assert on_cap.mean() == pytest.approx(caps / shape.area, abs=0.03)


def test_furthest_point_sampling_and_cube_fitting():
    line = np.stack([np.arange(11.0), np.zeros(11), np.zeros(11)], 1)
    np.testing.assert_array_equal(farthest_point_sampling(line, 3), [0, 10, 5])
    np.testing.assert_array_equal(farthest_point_sampling(line, 20), np.arange(11))
    fitted, centre, scale = fit_to_cube(np.array([[0.0, 0, 0], [4, 2, 1]]))
    np.testing.assert_allclose(fitted, [[-1, -0.5, -0.25], [1, 0.5, 0.25]])
    assert scale == 0.5 and list(centre) == [2, 1, 0.5]


def test_point_and_mesh_files_round_trip(tmp_path):
    points = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    for suffix in ('npy', 'ply'):
        np.testing.assert_array_equal(read_points(write_points(tmp_path / f'p.{suffix}', points)), points)
    ascii_ply = tmp_path / 'mesh.ply'
    ascii_ply.write_text('ply\nformat ascii 1.0\nelement vertex 4\nproperty float x\nproperty float y\n'
                         'property float z\nelement face 1\nproperty list uchar int vertex_indices\nend_header\n'
                         '0 0 0\n1 0 0\n1 1 0\n0 1 0\n4 0 1 2 3\n')
    vertices, faces = read_mesh(ascii_ply)
    np.testing.assert_array_equal(faces, [[0, 1, 2], [0, 2, 3]])  # the quad is fanned into triangles
    tri = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]])
    vertices, faces = read_mesh(write_mesh(tmp_path / 'tri.stl', tri, np.array([[0, 1, 2]])))
    np.testing.assert_array_equal(vertices[faces[0]], tri)
    (tmp_path / 'bad.npy').write_bytes(b'not numpy')
    with pytest.raises(ValueError, match='bad.npy'):
        read_points(tmp_path / 'bad.npy')


def test_points_with_normals_round_trip_and_noise_leaves_normals(tmp_path):
    rng = np.random.default_rng(1)
    normals = rng.normal(size=(40, 3))
    cloud = np.concatenate([rng.normal(size=(40, 3)), normals / np.linalg.norm(normals, axis=1, keepdims=True)], 1)
    for suffix in ('npy', 'ply'):
        path = write_points(tmp_path / f'n.{suffix}', cloud)
        np.testing.assert_allclose(read_points(path, normals=True), cloud, atol=1e-7)
        np.testing.assert_allclose(read_points(path), cloud[:, :3], atol=1e-7)  # xyz only unless asked
        with pytest.raises(ValueError, match=f'bare.{suffix}.*normals'):
            read_points(write_points(tmp_path / f'bare.{suffix}', cloud[:, :3]), normals=True)
    noisy = PointCloudNoise(std=0.5, prob=1.0)(dict(points=cloud.astype(np.float32)))['points']
    assert np.abs(noisy[:, :3] - cloud[:, :3]).mean() > 0.1
    np.testing.assert_array_equal(noisy[:, 3:], cloud[:, 3:].astype(np.float32))


def test_tokenizer_is_lossless_and_has_cad_recode_tokens(dataset_dir):
    tokenizer = CADCodeTokenizer(dataset_dir / 'tokenizer')
    rng = np.random.default_rng(7)
    for _ in range(10):
        code = random_shape(rng).code
        ids = tokenizer.encode(code)
        assert ids[0] == tokenizer.start_id and ids[-1] == tokenizer.end_id
        assert tokenizer.decode(ids[1:] + [tokenizer.pad_id, 5, 6]) == code  # stops at <|endoftext|>
    ids, mask = tokenizer.pad([[1, 2, 3], [4]])
    assert ids.tolist() == [[1, 2, 3], [4, tokenizer.pad_id, tokenizer.pad_id]] and mask.sum().item() == 4


def test_dataset_pipeline_gives_points_and_token_ids(dataset_dir):
    init_default_scope('opentad_lora')
    annotation = json.loads((dataset_dir / 'train.json').read_text())
    assert {item['kind'] for item in annotation['data_list']} <= set(SHAPE_MAKERS)
    tokenizer_dir = str(dataset_dir / 'tokenizer')
    dataset = CADRecodeDataset(ann_file='train.json', data_root=str(dataset_dir), pipeline=[
        dict(type='LoadCADPointCloud', num_points=256), dict(type='LoadCADCode'),
        dict(type='TokenizeCADCode', tokenizer=tokenizer_dir), dict(type='PackCADInputs')])
    assert len(dataset) == 6
    item = dataset[2]
    points, sample = item['inputs'], item['data_samples']
    assert points.shape == (256, 3) and points.dtype == torch.float32
    extent = points.max(0).values - points.min(0).values
    assert extent.max().item() == pytest.approx(2.0, abs=0.05)  # fitted to [-1, 1]
    code = (dataset_dir / annotation['data_list'][2]['code_path']).read_text()
    assert sample.gt_code == code and sample.sample_idx == 2
    assert CADCodeTokenizer(tokenizer_dir).decode(sample.input_ids[1:].tolist()) == code
    # Without an annotation file, point clouds and programs are paired by file name.
    by_folder = CADRecodeDataset(data_root=str(dataset_dir), data_prefix=dict(points='val/points', code='val/code'))
    assert len(by_folder) == 2 and by_folder[1]['code_path'].endswith('00001.py')


def test_programs_become_a_dataset_with_meshes(tmp_path):
    programs = tmp_path / 'programs'
    programs.mkdir()
    # Two unit cubes offset in z (an 'arrays' program builds its own mesh) and one failing program.
    faces = [[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1], [2, 3, 7], [2, 7, 6], [0, 2, 6],
             [0, 6, 4], [1, 5, 7], [1, 7, 3]]
    for i in range(2):
        corners = [[x, y, z + i] for x in (0, 1) for y in (0, 1) for z in (0, 1)]
        (programs / f'cube{i}.py').write_text(f'r = ({corners}, {faces})\n')
    (programs / 'broken.py').write_text('r = undefined_name\n')
    counts = programs_to_dataset(programs, tmp_path / 'data', 'test', num_surface_points=500, mesher='arrays')
    assert counts == dict(written=2, skipped=1)
    dataset = CADRecodeDataset(ann_file='test.json', data_root=str(tmp_path / 'data'))
    info = dataset[1]
    points = read_points(info['points_path'])
    assert points.shape == (500, 3) and points[:, 2].min() >= 1 - 1e-6 and points[:, 2].max() <= 2 + 1e-6
    # Each sample carries the outward normal of its face: the axis on which it sits on the cube's boundary.
    with_normals = read_points(info['points_path'], normals=True).astype(np.float64)
    offset = with_normals[:, :3] - [0.5, 0.5, 1.5]
    axis = np.abs(offset).argmax(1)
    expected = np.zeros((500, 3))
    expected[np.arange(500), axis] = np.sign(offset[np.arange(500), axis])
    np.testing.assert_allclose(with_normals[:, 3:], expected, atol=1e-6)
    vertices, mesh_faces = read_mesh(info['gt_mesh_path'])
    assert len(mesh_faces) == 12 and vertices[:, 2].min() == 1
