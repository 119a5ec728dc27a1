"""Procrustes alignment, PA errors and F-scores against hand-computed cases and FreiHAND's evaluator formula."""
import numpy as np
import pytest
import torch

from opentad_lora.evaluation.hamer import HandMeshMetric, f_score, pa_error, procrustes_align, procrustes_transform

CROSS = np.array([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0]])


def random_similarity(rng):
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    rotation = q * np.sign(np.linalg.det(q))
    return 1.7, rotation, np.array([0.3, -2.0, 5.0])


def test_known_rotation_scale_translation_is_recovered_exactly():
    rng = np.random.default_rng(0)
    gt = rng.normal(size=(21, 3))
    scale, rotation, translation = random_similarity(rng)
    pred = scale * gt @ rotation.T + translation
    s, r, t = procrustes_transform(pred, gt)  # the inverse map
    assert s == pytest.approx(1 / scale, rel=1e-12)
    np.testing.assert_allclose(r, rotation.T, atol=1e-12)
    np.testing.assert_allclose(t, -(rotation.T @ translation) / scale, atol=1e-12)
    np.testing.assert_allclose(procrustes_align(pred, gt), gt, atol=1e-12)
    assert pa_error(pred, gt) == pytest.approx(0.0, abs=1e-12)


def test_pa_error_of_a_stretched_cross_by_hand():
    # pred arms (1, 3) vs gt arms (1, 1): R = I, s = (1 + 3) / (1 + 9) = 0.4, arms become 0.4 and 1.2,
    # errors 0.6 and 0.2 -> mean 0.4, whatever similarity is applied to pred first.
    pred = CROSS * [1.0, 3.0, 1.0]
    assert pa_error(pred, CROSS) == pytest.approx(0.4, abs=1e-12)
    scale, rotation, translation = random_similarity(np.random.default_rng(1))
    assert pa_error(scale * pred @ rotation.T + translation, CROSS) == pytest.approx(0.4, abs=1e-12)


def test_reflection_is_not_used_to_align():
    mirrored = CROSS * [1.0, 1.0, 1.0] + [[0, 0, 0.5], [0, 0, 0.5], [0, 0, -0.5], [0, 0, -0.5]]
    _, rotation, _ = procrustes_transform(mirrored * [-1, 1, 1], mirrored)
    assert np.linalg.det(rotation) == pytest.approx(1.0)


def test_matches_freihand_evaluators_alignment():
    scipy_linalg = pytest.importorskip('scipy.linalg')
    rng = np.random.default_rng(2)
    gt = rng.normal(size=(778, 3)) * 0.05
    scale, rotation, translation = random_similarity(rng)
    pred = scale * (gt + rng.normal(size=gt.shape) * 0.005) @ rotation.T + translation
    # FreiHAND eval.py align_w_scale(gt, pred): centre, normalise by Frobenius norms, orthogonal_procrustes.
    gt_c, pred_c = gt - gt.mean(0), pred - pred.mean(0)
    s1, s2 = np.linalg.norm(gt_c) + 1e-8, np.linalg.norm(pred_c) + 1e-8
    rot, s = scipy_linalg.orthogonal_procrustes(gt_c / s1, pred_c / s2)
    reference = (pred_c / s2) @ rot.T * s * s1 + gt.mean(0)
    np.testing.assert_allclose(procrustes_align(pred, gt), reference, atol=1e-9)


def test_f_score_by_hand():
    gt = np.array([[0.0, 0, 0], [0.010, 0, 0], [0.020, 0, 0], [0.030, 0, 0]])
    pred = np.array([[0.001, 0, 0], [0.012, 0, 0], [0.027, 0, 0], [0.100, 0, 0]])
    # 5 mm: precision 3/4 (0.100 is far), recall 3/4 (0.020 is 7 mm from 0.027) -> 0.75
    assert f_score(pred, gt, 0.005) == pytest.approx(0.75)
    # 15 mm: precision 3/4, recall 1 -> 2 * 0.75 / 1.75
    assert f_score(pred, gt, 0.015) == pytest.approx(1.5 / 1.75)


def test_metric_averages_over_samples_in_millimetres():
    rng = np.random.default_rng(3)
    scale, rotation, translation = random_similarity(rng)
    exact = dict(pred_keypoints_3d=torch.tensor(scale * CROSS @ rotation.T + translation),
                 pred_vertices=torch.tensor(CROSS * 2.0), gt_keypoints_3d=torch.tensor(np.c_[CROSS, np.ones(4)]),
                 gt_vertices=torch.tensor(CROSS), gt_has_vertices=torch.tensor(1.0))
    stretched = dict(exact, pred_keypoints_3d=torch.tensor(CROSS * [1.0, 3.0, 1.0]),
                     pred_vertices=torch.tensor(CROSS * [1.0, 3.0, 1.0]))
    no_mesh = dict(exact, gt_has_vertices=torch.tensor(0.0), pred_vertices=torch.zeros(4, 3))
    metric = HandMeshMetric()
    metric.process({}, [exact, stretched, no_mesh])
    result = metric.compute_metrics(metric.results)
    assert result['PA-MPJPE'] == pytest.approx(1000 * 0.4 / 3)  # errors 0, 0.4, 0 m
    assert result['PA-MPVPE'] == pytest.approx(1000 * 0.4 / 2)  # the sample without a mesh is left out
    assert result['F@5mm'] == pytest.approx(0.5) and result['F@15mm'] == pytest.approx(0.5)
