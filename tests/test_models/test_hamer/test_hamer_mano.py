"""MANO file reading (safe unpickling of the official layout) and linear blend skinning against hand-computed cases."""
import os
import pickle
import sys
import types
from collections import Counter

import numpy as np
import pytest
import torch

from opentad_lora.datasets.hamer import build_synthetic_mano, write_synthetic_mano
from opentad_lora.models.hamer import MANOLayer, aa_to_rotmat, load_mano_model, read_mano_pickle

PARENTS = [-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14]


def tiny_mano_arrays() -> dict:
    """21 vertices: vertex j < 16 sits on joint j (one-hot regressor) and moves with it; 16..20 are tips."""
    verts = np.zeros((21, 3))
    verts[:4, 0] = [0, 1, 2, 3]  # wrist and the index chain on the x axis
    verts[4:16] = np.stack([np.zeros(12), np.arange(4, 16), np.ones(12)], 1)
    verts[16], verts[17], verts[20] = [4, 0, 0], [2.5, 0, 0], [2, 1, 0]
    verts[18], verts[19] = [0, -1, 0], [0, -2, 0]
    weights = np.zeros((21, 16))
    weights[np.arange(16), np.arange(16)] = 1
    weights[16, 3] = weights[17, 2] = weights[18, 0] = weights[19, 0] = 1
    weights[20, [0, 1]] = 0.5
    shapedirs = np.zeros((21, 3, 10))
    shapedirs[1, 1, 0] = 0.1  # beta_0 lifts vertex 1 (hence joint 1) by 0.1 in y
    posedirs = np.zeros((21, 3, 135))
    posedirs[17, 2, 0] = 0.2  # pose feature 0 = R_1[0, 0] - 1 pushes vertex 17 in z
    return dict(v_template=verts, shapedirs=shapedirs, posedirs=posedirs,
                J_regressor=np.eye(16, 21), weights=weights,
                kintree_table=np.array([[2 ** 32 - 1] + PARENTS[1:], list(range(16))]),
                f=np.array([[0, 1, 2], [2, 3, 16]], np.uint32), hands_components=np.eye(45), hands_mean=np.zeros(45))


def write_pickle(path, data, protocol: int = 2) -> str:
    with open(path, 'wb') as handle:
        pickle.dump(data, handle, protocol=protocol)
    return str(path)


def test_lbs_matches_hand_computed_case(tmp_path):
    layer = MANOLayer(write_pickle(tmp_path / 'tiny.pkl', tiny_mano_arrays()), tip_vertex_ids=(16, 17, 18, 19, 20))
    rz90 = torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    hand_pose = torch.eye(3).repeat(1, 15, 1, 1)
    hand_pose[0, 0] = rz90  # joint 1 (index MCP) turns 90 degrees about z
    betas = torch.zeros(1, 10)
    betas[0, 0] = 1.0
    out = layer(torch.eye(3)[None, None], hand_pose, betas, transl=torch.tensor([[0.0, 0.0, 10.0]]))
    verts = out['vertices'][0] - torch.tensor([0.0, 0.0, 10.0])
    # J1 = (1, 0.1, 0) after the shape offset; descendants of joint 1 turn about it: (x, y) -> (-y, x) around J1.
    expected = {1: [1, 0.1, 0], 2: [1.1, 1.1, 0], 3: [1.1, 2.1, 0], 16: [1.1, 3.1, 0],
                17: [1.1, 1.6, -0.2],  # pose blend shape moved it to z = -0.2 before skinning
                20: [1.05, 1.05, 0],  # half wrist (unmoved), half joint 1: mean of (2, 1, 0) and (0.1, 1.1, 0)
                0: [0, 0, 0], 5: [0, 5, 1], 18: [0, -1, 0]}
    for index, point in expected.items():
        torch.testing.assert_close(verts[index], torch.tensor(point, dtype=torch.float32), atol=1e-6, rtol=0,
                                   msg=f'vertex {index}')
    torch.testing.assert_close(out['mano_joints'][0, 2] - torch.tensor([0, 0, 10.0]), torch.tensor([1.1, 1.1, 0]))
    # OpenPose order: slot 4 is the first tip (thumb), slot 5 MANO joint 1, slot 8 the second tip.
    torch.testing.assert_close(out['joints'][0, 4], out['vertices'][0, 16])
    torch.testing.assert_close(out['joints'][0, 5], out['mano_joints'][0, 1])
    torch.testing.assert_close(out['joints'][0, 8], out['vertices'][0, 17])


def test_global_orientation_rotates_everything_about_the_wrist(tmp_path):
    layer = MANOLayer(write_pickle(tmp_path / 'tiny.pkl', tiny_mano_arrays()), tip_vertex_ids=(16, 17, 18, 19, 20))
    rot = aa_to_rotmat(torch.tensor([0.3, -1.2, 0.5]))
    out = layer(rot[None, None], torch.eye(3).repeat(1, 15, 1, 1), torch.zeros(1, 10))
    torch.testing.assert_close(out['vertices'][0], layer.v_template @ rot.T, atol=1e-6, rtol=0)


class _FakeCh:
    """Pickles like a plain chumpy ``Ch``: its state is a dict holding the array as ``x``."""

    def __init__(self, array):
        self.x = array
        self._dirty_vars = set()


def test_official_layout_with_chumpy_and_scipy_sparse_loads_without_either(tmp_path, monkeypatch):
    scipy_sparse = pytest.importorskip('scipy.sparse')
    arrays = tiny_mano_arrays()
    module = types.ModuleType('chumpy.ch')
    module.Ch = _FakeCh
    _FakeCh.__module__, _FakeCh.__qualname__ = 'chumpy.ch', 'Ch'
    monkeypatch.setitem(sys.modules, 'chumpy', types.ModuleType('chumpy'))
    monkeypatch.setitem(sys.modules, 'chumpy.ch', module)
    data = dict(arrays, shapedirs=_FakeCh(arrays['shapedirs']), posedirs=_FakeCh(arrays['posedirs']),
                J_regressor=scipy_sparse.csc_matrix(arrays['J_regressor']), bs_style='lbs')
    paths = [write_pickle(tmp_path / f'p{protocol}.pkl', data, protocol) for protocol in (1, 2)]
    monkeypatch.delitem(sys.modules, 'chumpy.ch')  # the loader must not need chumpy
    for path in paths:
        raw = read_mano_pickle(path)
        assert isinstance(raw['shapedirs'], np.ndarray) and isinstance(raw['J_regressor'], np.ndarray)
        np.testing.assert_array_equal(raw['shapedirs'], arrays['shapedirs'])
        np.testing.assert_array_equal(raw['J_regressor'], arrays['J_regressor'])
        assert load_mano_model(path)['parents'].tolist() == PARENTS


class _Exploit:
    def __reduce__(self):
        return os.system, ('echo pwned',)


def test_refuses_any_other_global(tmp_path):
    path = write_pickle(tmp_path / 'evil.pkl', dict(tiny_mano_arrays(), extra=_Exploit()))
    with pytest.raises(ValueError, match=r'refusing to load global (posix|nt|os)\.system'):
        read_mano_pickle(path)


def test_bad_shapes_name_the_file_and_key(tmp_path):
    arrays = tiny_mano_arrays()
    arrays['weights'] = arrays['weights'][:, :15]
    path = write_pickle(tmp_path / 'bad.pkl', arrays)
    with pytest.raises(ValueError, match=r"bad\.pkl: 'weights' has shape \(21, 15\)"):
        load_mano_model(path)
    with pytest.raises(FileNotFoundError, match='licence'):
        load_mano_model(tmp_path / 'missing.pkl')


def test_synthetic_mano_has_the_official_layout_and_a_single_open_surface(tmp_path):
    model = build_synthetic_mano(seed=0)
    shapes = {k: v.shape for k, v in model.items() if isinstance(v, np.ndarray)}
    assert shapes == {'v_template': (778, 3), 'shapedirs': (778, 3, 10), 'posedirs': (778, 3, 135),
                      'J_regressor': (16, 778), 'weights': (778, 16), 'kintree_table': (2, 16), 'f': (1538, 3),
                      'hands_components': (45, 45), 'hands_mean': (45,), 'hands_coeffs': (1554, 45), 'J': (16, 3)}
    edges = Counter(tuple(sorted(e)) for a, b, c in model['f'] for e in ((a, b), (b, c), (c, a)))
    assert 778 - len(edges) + len(model['f']) == 1  # Euler characteristic of a disc: one surface, one hole
    assert sorted(Counter(edges.values()).items()) == [(1, 16), (2, len(edges) - 16)]  # manifold, 16-edge wrist
    np.testing.assert_allclose(model['weights'].sum(1), 1.0)
    layer = MANOLayer(write_synthetic_mano(tmp_path / 'MANO_RIGHT.pkl'))
    rest = layer(torch.eye(3)[None, None], torch.eye(3).repeat(1, 15, 1, 1), torch.zeros(1, 10))
    tips = rest['joints'][0, [4, 8, 12, 16, 20]]
    chains = rest['joints'][0, [3, 7, 11, 15, 19]]  # the joint before each tip
    assert (torch.linalg.norm(tips - rest['joints'][0, :1], dim=1)
            > torch.linalg.norm(chains - rest['joints'][0, :1], dim=1)).all()  # tips are the farthest points
