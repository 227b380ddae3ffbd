"""Splitting a labelled training set over federated clients: IID or Dirichlet over labels, seeded.

``iid``
    a seeded permutation of the samples cut into ``num_clients`` parts whose sizes differ by
    at most one (``numpy.array_split``).
``dirichlet:ALPHA``
    the label-skewed split of Hsu, Qi and Brown (2019): for every class ``c`` independently,
    proportions ``p_c ~ Dirichlet(ALPHA * 1_K)`` over the ``K`` clients, and the class's
    (shuffled) samples are cut at the cumulative proportions ``floor(n_c * cumsum(p_c))``.
    Small ``ALPHA`` (0.1) gives clients that hold one or two classes; large ``ALPHA`` (100)
    approaches IID. Draws are repeated (same generator, so still seeded) until every client
    holds at least ``min_size`` samples.

No flwr here: the split is plain numpy, so it is tested and reused without the FL stack.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import numpy as np

__all__ = ["PartitionError", "parse_partition", "partition_indices"]

_MAX_DRAWS = 1000


class PartitionError(ValueError):
    """A partition spec or a split that cannot be made; the message is one line."""


def parse_partition(spec: str) -> Tuple[str, Optional[float]]:
    """``"iid"`` -> ``("iid", None)``; ``"dirichlet:0.5"`` -> ``("dirichlet", 0.5)``."""
    text = str(spec).strip().lower()
    if text == "iid":
        return "iid", None
    if text.startswith("dirichlet:"):
        value = text.split(":", 1)[1]
        try:
            alpha = float(value)
        except ValueError:
            alpha = float("nan")
        if not (math.isfinite(alpha) and alpha > 0):
            raise PartitionError(f"--partition {spec!r}: the Dirichlet alpha must be a positive number "
                                 f"(e.g. dirichlet:0.5), got {value!r}")
        return "dirichlet", alpha
    raise PartitionError(f"unknown --partition {spec!r}; expected 'iid' or 'dirichlet:ALPHA' (e.g. dirichlet:0.5)")


def partition_indices(labels: np.ndarray, num_clients: int, spec: str, seed: int = 0,
                      min_size: int = 1) -> List[np.ndarray]:
    """Indices into ``labels`` for each of ``num_clients`` clients (disjoint, covering all samples,
    each sorted). ``spec`` as :func:`parse_partition`; ``min_size`` samples per client at least."""
    kind, alpha = parse_partition(spec)
    labels = np.asarray(labels).reshape(-1)
    n = int(labels.shape[0])
    if not isinstance(num_clients, (int, np.integer)) or num_clients < 1:
        raise PartitionError(f"--clients must be a positive integer, got {num_clients!r}")
    if num_clients * min_size > n:
        raise PartitionError(f"--clients {num_clients} needs at least {num_clients * min_size} training samples "
                             f"({min_size} per client) but there are {n}")
    rng = np.random.default_rng(seed)
    if kind == "iid":
        return [np.sort(part) for part in np.array_split(rng.permutation(n), num_clients)]
    assert alpha is not None
    classes = np.unique(labels)
    by_class = [np.flatnonzero(labels == c) for c in classes]
    for _ in range(_MAX_DRAWS):
        parts: List[List[np.ndarray]] = [[] for _ in range(num_clients)]
        for idx in by_class:
            idx = rng.permutation(idx)
            p = rng.dirichlet(np.full(num_clients, alpha))
            cuts = np.floor(np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].append(chunk)
        out = [np.sort(np.concatenate(chunks)) for chunks in parts]
        if min(len(o) for o in out) >= min_size:
            return out
    raise PartitionError(f"--partition {spec}: no Dirichlet draw in {_MAX_DRAWS} gave each of the {num_clients} "
                         f"clients {min_size} or more of the {n} samples; use fewer clients or a larger alpha")
