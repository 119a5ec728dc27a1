"""Client data partitions, reproducible by seed: IID shards and Dirichlet(alpha) non-IID label splits."""
from typing import List, Sequence

import numpy as np


def iid_partition(num_samples: int, num_clients: int, seed: int = 0) -> List[np.ndarray]:
    """A random permutation of ``range(num_samples)`` cut into ``num_clients`` near-equal shards (sorted indices)."""
    if num_clients < 1:
        raise ValueError(f'num_clients must be >= 1, got {num_clients}.')
    order = np.random.default_rng(seed).permutation(num_samples)
    return [np.sort(part) for part in np.array_split(order, num_clients)]


def dirichlet_partition(labels: Sequence[int], num_clients: int, alpha: float, seed: int = 0) -> List[np.ndarray]:
    """Non-IID split: for each class, client shares ``q ~ Dirichlet(alpha * 1)`` and that class's samples are dealt
    out in those proportions. Small ``alpha`` gives few classes per client; a client may get no sample at all
    (callers report empty partitions).
    """
    if num_clients < 1:
        raise ValueError(f'num_clients must be >= 1, got {num_clients}.')
    if alpha <= 0:
        raise ValueError(f'Dirichlet alpha must be > 0, got {alpha}.')
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    parts: List[List[int]] = [[] for _ in range(num_clients)]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        shares = rng.dirichlet(np.full(num_clients, float(alpha)))
        cuts = (np.cumsum(shares)[:-1] * len(members)).round().astype(int)
        for client, chunk in enumerate(np.split(members, cuts)):
            parts[client].extend(chunk.tolist())
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def make_partition(labels: Sequence[int], num_clients: int, kind: str = 'iid', alpha: float = 0.5,
                   seed: int = 0) -> List[np.ndarray]:
    """``kind='iid'`` or ``'dirichlet'`` (with ``alpha``)."""
    if kind == 'iid':
        return iid_partition(len(labels), num_clients, seed)
    if kind == 'dirichlet':
        return dirichlet_partition(labels, num_clients, alpha, seed)
    raise ValueError(f"Unknown partition {kind!r}; use 'iid' or 'dirichlet'.")
