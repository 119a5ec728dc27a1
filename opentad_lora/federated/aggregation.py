"""Aggregation maths of federated LoRA (numpy only; the Flower strategies call these).

With client weights ``p_k = n_k / sum(n)`` and per-layer factors ``(A_k, B_k)`` (update ``s * B_k @ A_k``):

* ``fedavg`` (FedIT, the seed's): ``A = sum p_k A_k``, ``B = sum p_k B_k``. Inexact: ``sum p_k B_k A_k - B A =
  sum p_k (B_k - B)(A_k - A)``, a covariance term that is zero only if all A_k or all B_k agree.
* ``ffa`` (FFA-LoRA): A is frozen and identical on every client, only B is sent; ``B = sum p_k B_k`` gives
  ``B A = sum p_k B_k A`` exactly.
* ``exact``: ``M = sum p_k B_k A_k``, re-factored to rank r by truncated SVD (``B = U_r S_r^1/2``,
  ``A = S_r^1/2 V_r^T``, the best rank-r approximation); the rest ``M - B A`` is returned as the residual, which the
  caller may fold into the frozen base weight (``W += s * residual``) so the global model equals the mean of the
  clients' models, or drop.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

METHODS = ('fedavg', 'ffa', 'exact')


def client_weights(num_examples: Sequence[int]) -> np.ndarray:
    """``p_k = n_k / sum(n)``.

    Raises:
        ValueError: if a count is negative or all are zero.
    """
    counts = np.asarray(num_examples, dtype=np.float64)
    if (counts < 0).any() or counts.sum() <= 0:
        raise ValueError(f'Client example counts must be >= 0 with a positive sum, got {list(num_examples)}.')
    return counts / counts.sum()


def weighted_mean(arrays: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """``sum_k w_k * arrays[k]`` in float64, returned in the dtype of the first array."""
    out = sum(float(w) * np.asarray(a, dtype=np.float64) for w, a in zip(weights, arrays))
    return np.asarray(out).astype(np.asarray(arrays[0]).dtype)


def product_mean(a_list: Sequence[np.ndarray], b_list: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """``M = sum_k w_k B_k @ A_k`` (float64), the exact mean of the clients' low-rank updates."""
    return sum(float(w) * (np.asarray(b, np.float64) @ np.asarray(a, np.float64))
               for w, a, b in zip(weights, a_list, b_list))


def refactor(matrix: np.ndarray, rank: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(A, B, residual)`` with ``B @ A`` the best rank-``rank`` approximation of ``matrix`` and
    ``residual = matrix - B @ A`` (zero when ``rank(matrix) <= rank``). A is (rank, in), B is (out, rank)."""
    u, s, vt = np.linalg.svd(np.asarray(matrix, np.float64), full_matrices=False)
    keep = min(rank, len(s))
    root = np.sqrt(s[:keep])
    b = np.zeros((matrix.shape[0], rank))
    a = np.zeros((rank, matrix.shape[1]))
    b[:, :keep] = u[:, :keep] * root
    a[:keep] = root[:, None] * vt[:keep]
    return a, b, matrix - b @ a


@dataclass
class LoRALayout:
    """Where each layer's A and B sit in the exchanged list, from the parameter names (PEFT naming)."""

    names: List[str]

    def __post_init__(self) -> None:
        self.pairs: Dict[str, Dict[str, int]] = {}
        for index, name in enumerate(self.names):
            for kind in ('lora_A', 'lora_B'):
                if f'.{kind}.' in name:
                    self.pairs.setdefault(name.split(f'.{kind}.')[0], {})[kind] = index

    @property
    def has_a(self) -> bool:
        return any('lora_A' in p for p in self.pairs.values())

    def complete_pairs(self) -> Dict[str, Tuple[int, int]]:
        """``{layer: (index of A, index of B)}``.

        Raises:
            ValueError: naming the layers whose A or B is not exchanged (``exact`` needs both).
        """
        broken = [layer for layer, p in self.pairs.items() if set(p) != {'lora_A', 'lora_B'}]
        if broken:
            raise ValueError(f'Exact aggregation needs A and B of every layer; missing for {broken[:5]}.')
        return {layer: (p['lora_A'], p['lora_B']) for layer, p in self.pairs.items()}


def aggregate(method: str, client_arrays: Sequence[Sequence[np.ndarray]], num_examples: Sequence[int],
              layout: LoRALayout) -> Tuple[List[np.ndarray], Dict[str, np.ndarray]]:
    """Aggregate the clients' exchanged arrays (each in ``layout.names`` order).

    Returns:
        ``(arrays, residuals)``: the new global arrays in the same order, and for ``exact`` the per-layer residual
        ``M - B A`` (empty for the other methods).

    Raises:
        ValueError: unknown method; ``ffa`` with A among the exchanged tensors (A must be frozen).
    """
    if method not in METHODS:
        raise ValueError(f'Unknown federated LoRA aggregation {method!r}; choose one of {METHODS}.')
    weights = client_weights(num_examples)
    if method == 'ffa' and layout.has_a:
        raise ValueError('FFA-LoRA exchanges B only, but the clients sent LoRA A tensors: freeze A on the clients.')
    averaged = [weighted_mean([arrays[i] for arrays in client_arrays], weights) for i in range(len(layout.names))]
    if method != 'exact':
        return averaged, {}
    residuals: Dict[str, np.ndarray] = {}
    for layer, (ia, ib) in layout.complete_pairs().items():
        merged = product_mean([c[ia] for c in client_arrays], [c[ib] for c in client_arrays], weights)
        a, b, residuals[layer] = refactor(merged, client_arrays[0][ia].shape[0])
        averaged[ia], averaged[ib] = a.astype(averaged[ia].dtype), b.astype(averaged[ib].dtype)
    return averaged, residuals


def check_arrays(arrays: Sequence[np.ndarray], shapes: Sequence[Tuple[int, ...]]) -> Optional[str]:
    """None when ``arrays`` match ``shapes`` in count and shape and are finite, else a one-line reason."""
    if len(arrays) != len(shapes):
        return f'sent {len(arrays)} arrays, expected {len(shapes)}'
    for index, (array, shape) in enumerate(zip(arrays, shapes)):
        if tuple(np.shape(array)) != tuple(shape):
            return f'array {index} has shape {tuple(np.shape(array))}, expected {tuple(shape)}'
        if not np.isfinite(array).all():
            return f'array {index} has NaN or infinite values'
    return None
