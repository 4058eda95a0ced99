"""Hashed samples of corpus indices: the m indices with the smallest hash(seed, index) keys of a
stream — D_sub (stream SUBSET) and the pretraining held-out sample (stream HELDOUT).

Every rank computes the same sample from (n, m, seed) alone, in bounded memory (blocks of the
index range, keeping the running m smallest), so no rank needs the corpus or a broadcast.
"""
from __future__ import annotations

import numpy as np

from bioprune.engine.runtime import hashing


def subset_size(n: int, size: int | None, fraction: float | None) -> int:
    if size is not None and fraction is not None:
        raise ValueError("give --subset-size or --subset-fraction, not both")
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise ValueError(f"--subset-fraction must be in (0, 1], got {fraction}")
        m = max(1, int(np.floor(fraction * n)))
    else:
        m = n if size is None else size
    if not 1 <= m <= n:
        raise ValueError(f"--subset-size must be between 1 and the corpus size {n}, got {m}")
    return m


def draw_subset(n: int, m: int, seed: int) -> np.ndarray:
    """D_sub: sorted int64 corpus indices."""
    return smallest_keys(n, m, seed, hashing.SUBSET)


def heldout_indices(n: int, size: int, seed: int) -> np.ndarray:
    """The pretraining held-out sample (never more than a tenth of the corpus); sorted int64."""
    if size <= 0:
        return np.empty(0, dtype=np.int64)
    return smallest_keys(n, min(size, max(n // 10, 1)), seed, hashing.HELDOUT)


def smallest_keys(n: int, m: int, seed: int, stream: int, block: int = 1 << 24) -> np.ndarray:
    """Sorted int64 indices of the m smallest (hash(seed, index, stream), index) pairs among
    0..n-1."""
    best_k = np.empty(0, dtype=np.uint64)
    best_i = np.empty(0, dtype=np.int64)
    for start in range(0, n, block):
        idx = np.arange(start, min(n, start + block), dtype=np.int64)
        k = np.concatenate([best_k, hashing.hash_keys(seed, idx, stream)])
        i = np.concatenate([best_i, idx])
        if len(k) > m:
            kth = np.partition(k, m - 1)[m - 1]
            cand = np.flatnonzero(k <= kth)          # every pair that can be among the m smallest
            keep = cand[np.lexsort((i[cand], k[cand]))[:m]]
            k, i = k[keep], i[keep]
        best_k, best_i = k, i
    return np.sort(best_i)
