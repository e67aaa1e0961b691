"""Clustering-based order planning: which pending edits share an expert, and in what order."""

from __future__ import annotations

import math

import numpy as np
from sklearn.cluster import KMeans


def plan_batches(embeddings: np.ndarray, *, batch_size: int, planning: bool = True, random_state: int = 0) -> list[list[int]]:
    """Split edit indices into batches of at most `batch_size`, one expert each.

    With planning, K-means groups similar edits (they then share an expert, so a paraphrase that
    lands on a neighbour's anchor still reaches an expert that knows its fact); batches are
    ordered cluster by cluster, largest first. Without planning: arrival order (the ablation).
    """
    n = len(embeddings)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if n == 0:
        return []
    if not planning or n <= batch_size:
        return [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    x = np.asarray(embeddings, dtype=np.float64)
    x = x - x.mean(axis=0)
    x /= np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)
    k = math.ceil(n / batch_size)
    labels = KMeans(n_clusters=k, n_init=4, random_state=random_state).fit_predict(x)
    clusters = sorted((np.flatnonzero(labels == c).tolist() for c in range(k)), key=lambda ix: (-len(ix), ix[0]))
    batches: list[list[int]] = []
    leftovers: list[int] = []
    for members in clusters:
        while len(members) >= batch_size:
            batches.append(members[:batch_size])
            members = members[batch_size:]
        leftovers.extend(members)
    # Remainders of several clusters are packed together in cluster order (still neighbours).
    batches.extend(leftovers[i : i + batch_size] for i in range(0, len(leftovers), batch_size))
    return batches
