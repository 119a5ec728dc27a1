"""Aggregation maths of federated LoRA and the client partitions."""
import numpy as np
import pytest

from opentad_lora.federated.aggregation import (LoRALayout, aggregate, check_arrays, client_weights, product_mean,
                                                refactor)
from opentad_lora.federated.partition import dirichlet_partition, iid_partition, make_partition

NAMES = ['l.lora_A.default.weight', 'l.lora_B.default.weight']
RNG = np.random.default_rng(0)


def factors(out: int = 6, inp: int = 5, r: int = 2, clients: int = 2):
    return [RNG.normal(size=(r, inp)) for _ in range(clients)], [RNG.normal(size=(out, r)) for _ in range(clients)]


def test_fedavg_of_factors_is_biased_by_the_covariance_term():
    (a1, a2), (b1, b2) = factors()
    (a, b), _ = aggregate('fedavg', [[a1, b1], [a2, b2]], [10, 10], LoRALayout(NAMES))
    np.testing.assert_allclose(a, (a1 + a2) / 2)
    exact = (b1 @ a1 + b2 @ a2) / 2
    # Two equal clients: mean(BA) - mean(B) mean(A) = 1/4 (B1 - B2)(A1 - A2), not zero.
    np.testing.assert_allclose(exact - b @ a, 0.25 * (b1 - b2) @ (a1 - a2), atol=1e-12)
    assert np.abs(exact - b @ a).max() > 0.1
    # Unequal weights: the general identity sum p_k (B_k - B)(A_k - A).
    (a, b), _ = aggregate('fedavg', [[a1, b1], [a2, b2]], [1, 3], LoRALayout(NAMES))
    p = client_weights([1, 3])
    covariance = p[0] * (b1 - b) @ (a1 - a) + p[1] * (b2 - b) @ (a2 - a)
    np.testing.assert_allclose(product_mean([a1, a2], [b1, b2], p) - b @ a, covariance, atol=1e-12)


def test_ffa_with_a_shared_frozen_a_is_exact():
    a = RNG.normal(size=(2, 5))
    b_list = factors()[1] + [RNG.normal(size=(6, 2))]
    counts = [5, 1, 2]
    (b, ), _ = aggregate('ffa', [[bk] for bk in b_list], counts, LoRALayout(NAMES[1:]))
    np.testing.assert_allclose(b @ a, product_mean([a] * 3, b_list, client_weights(counts)), atol=1e-12)
    with pytest.raises(ValueError, match='freeze A'):
        aggregate('ffa', [[RNG.normal(size=(2, 5)), bk] for bk in b_list], counts, LoRALayout(NAMES))


def test_exact_equals_the_weighted_mean_of_products_when_the_rank_allows():
    a_list, b_list = factors(r=2)
    for b in b_list:
        b[:, 1] = 0.0  # each client's update has rank 1, so their mean has rank <= 2 = r
    (a, b), residuals = aggregate('exact', [[ak, bk] for ak, bk in zip(a_list, b_list)], [3, 1], LoRALayout(NAMES))
    mean = product_mean(a_list, b_list, client_weights([3, 1]))
    np.testing.assert_allclose(b @ a, mean, atol=1e-10)
    np.testing.assert_allclose(residuals['l'], 0.0, atol=1e-10)
    assert a.shape == (2, 5) and b.shape == (6, 2)


def test_exact_keeps_the_best_rank_r_part_and_returns_the_rest():
    a_list, b_list = factors(r=2, clients=3)
    (a, b), residuals = aggregate('exact', [[ak, bk] for ak, bk in zip(a_list, b_list)], [1, 1, 2],
                                  LoRALayout(NAMES))
    mean = product_mean(a_list, b_list, client_weights([1, 1, 2]))
    np.testing.assert_allclose(b @ a + residuals['l'], mean, atol=1e-10)
    singular = np.linalg.svd(mean, compute_uv=False)
    assert len(singular) > 2 and singular[2] > 1e-3  # rank 3 > r
    # Eckart-Young: the residual of the best rank-2 approximation has the tail singular values.
    np.testing.assert_allclose(np.linalg.norm(residuals['l']) ** 2, (singular[2:] ** 2).sum(), rtol=1e-8)
    a2, b2, _ = refactor(mean, 2)
    np.testing.assert_allclose(b2 @ a2, b @ a, atol=1e-10)


def test_layout_pairs_layers_and_checks_arrays():
    names = ['x.lora_A.default.weight', 'y.lora_A.default.weight', 'x.lora_B.default.weight',
             'y.lora_B.default.weight']
    layout = LoRALayout(names)
    assert layout.complete_pairs() == {'x': (0, 2), 'y': (1, 3)}
    with pytest.raises(ValueError, match=r"missing for \['y'\]"):
        LoRALayout(names[:3]).complete_pairs()
    shapes = [(2, 3), (4, 2)]
    assert check_arrays([np.zeros(s) for s in shapes], shapes) is None
    assert check_arrays([np.zeros((2, 3))], shapes) == 'sent 1 arrays, expected 2'
    assert check_arrays([np.zeros((2, 3)), np.zeros((2, 4))], shapes) == 'array 1 has shape (2, 4), expected (4, 2)'
    assert 'NaN' in check_arrays([np.zeros((2, 3)), np.full((4, 2), np.nan)], shapes)
    with pytest.raises(ValueError, match='positive sum'):
        client_weights([0, 0])
    with pytest.raises(ValueError, match='Unknown federated LoRA aggregation'):
        aggregate('fedprox', [], [1], layout)


def test_iid_partition_is_a_reproducible_near_equal_split():
    parts = iid_partition(103, 4, seed=1)
    assert sorted(len(p) for p in parts) == [25, 26, 26, 26]
    assert sorted(np.concatenate(parts).tolist()) == list(range(103))
    assert all(np.array_equal(x, y) for x, y in zip(parts, iid_partition(103, 4, seed=1)))
    assert not all(np.array_equal(x, y) for x, y in zip(parts, iid_partition(103, 4, seed=2)))


def test_dirichlet_partition_skews_labels_as_alpha_shrinks():
    labels = np.repeat(np.arange(5), 40)

    def classes_per_client(alpha: float) -> float:
        parts = dirichlet_partition(labels, 6, alpha, seed=0)
        assert sorted(np.concatenate(parts).tolist()) == list(range(200))  # every sample exactly once
        return float(np.mean([np.sum(np.bincount(labels[p], minlength=5) >= 4) for p in parts]))

    assert classes_per_client(100.0) == 5.0 > 2.5 > classes_per_client(0.05)
    parts = make_partition(labels, 6, 'dirichlet', 0.5, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(parts, dirichlet_partition(labels, 6, 0.5, seed=3)))
    # Very skewed splits leave clients empty; that is reported by the runner, not an error here.
    assert min(len(p) for p in dirichlet_partition(labels[:10], 8, 0.01, seed=0)) == 0
    with pytest.raises(ValueError, match="'iid' or 'dirichlet'"):
        make_partition(labels, 2, 'shards')
