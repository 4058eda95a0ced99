"""A brute-force NumPy reference of DESIGN.md's selection rules (full sorts, one process), written
independently of bioprune.engine.selection.exact, plus hand-checked cases of the reference itself.

The reference is deliberately naive: a lexsort of the whole array for the ranking, a Python loop
for Algorithm 1, a lexsort per stratum for the picks. Only the hash keys come from the engine
(hash(seed, index) is the project's definition of "random key").
"""
from __future__ import annotations

import math

import numpy as np

from bioprune.engine.runtime.hashing import SELECT, hash_keys


def ranking(index, score):
    """Positions ordered by (score descending, corpus index ascending)."""
    index = np.asarray(index, dtype=np.int64)
    score = np.asarray(score, dtype=np.float64)
    return np.lexsort((index, -score))


def ref_topk(index, score, k):
    index = np.asarray(index, dtype=np.int64)
    return np.sort(index[ranking(index, score)[:k]])


def ref_random(index, m, seed=0):
    index = np.asarray(index, dtype=np.int64)
    keys = hash_keys(seed, index, SELECT)
    return np.sort(index[np.lexsort((index, keys))[:m]])


def ref_algorithm1(sizes, budget):
    """Algorithm 1, literally: visit strata by (size asc, stratum asc), give min(size, left //
    rest)."""
    K = len(sizes)
    visit = sorted(range(K), key=lambda j: (sizes[j], j))
    out = [0] * K
    left = budget
    for i, j in enumerate(visit):
        give = min(sizes[j], left // (K - i))
        out[j] = give
        left -= give
    return out


def ref_cci(index, score, budget, beta=0.05, K=50, seed=0):
    """Returns (coreset, details) with details: c, lo, hi, strata sizes, budgets, picks."""
    index = np.asarray(index, dtype=np.int64)
    score = np.asarray(score, dtype=np.float64)
    n = index.size
    c = int(math.floor(beta * n))
    rest = ranking(index, score)[c:]
    s = score[rest]
    lo, hi = float(s.min()), float(s.max())
    if hi == lo:
        stratum = np.zeros(rest.size, dtype=np.int64)
    else:
        stratum = np.minimum(K - 1, np.floor((s - lo) / (hi - lo) * K)).astype(np.int64)
    sizes = [int((stratum == j).sum()) for j in range(K)]
    budgets = ref_algorithm1(sizes, budget)
    keys = hash_keys(seed, index, SELECT)
    picks = []
    for j in range(K):
        members = rest[stratum == j]
        order = np.lexsort((index[members], keys[members]))
        picks.append(index[members[order[:budgets[j]]]])
    coreset = np.sort(np.concatenate(picks)) if picks else np.zeros(0, np.int64)
    return coreset, {"c": c, "lo": lo, "hi": hi, "sizes": sizes, "budgets": budgets,
                     "picks": [len(p) for p in picks]}


def ref_select(index, score, strategy, budget, beta=0.05, K=50, seed=0):
    if strategy == "topk":
        return ref_topk(index, score, budget)
    if strategy == "random":
        return ref_random(index, budget, seed)
    return ref_cci(index, score, budget, beta, K, seed)[0]


# ----------------------------------------------------------------------------- the reference itself

def test_reference_algorithm1_by_hand():
    # sizes 0, 3, 10, 50 (K = 4), budget 20: visit 0 (size 0) -> min(0, 20//4=5) = 0, left 20;
    # stratum 1 (size 3) -> min(3, 20//3=6) = 3, left 17; stratum 2 (10) -> min(10, 17//2=8) = 8,
    # left 9; stratum 3 (50) -> min(50, 9//1) = 9.
    assert ref_algorithm1([0, 3, 10, 50], 20) == [0, 3, 8, 9]
    # equal sizes: ties by stratum number; 10 // 3 = 3, then 7 // 2 = 3, then 4
    assert ref_algorithm1([5, 5, 5], 10) == [3, 3, 4]


def test_reference_topk_ties_by_index():
    idx = np.array([5, 1, 3, 0, 2])
    s = np.array([1.0, 2.0, 2.0, 2.0, 0.5])
    assert ref_topk(idx, s, 2).tolist() == [0, 1]
    assert ref_topk(idx, s, 4).tolist() == [0, 1, 3, 5]
