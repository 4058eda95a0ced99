"""DESIGN.md's exact selection rules that do not depend on how scores are distributed.

Ranking: samples ordered by (score descending, corpus index ascending).
- Top-I takes the first k.
- CCI drops the first c = floor(beta * n), takes lo / hi = min / max of the remaining scores, puts a
  sample in stratum min(K-1, floor((s - lo) / (hi - lo) * K)) computed in float64 (all in stratum 0
  when hi == lo), gives budgets by Algorithm 1 (:func:`strata_budgets`) and picks inside a stratum
  the samples with the smallest keys hash(seed, index) (ties by index).
- Random takes the m smallest keys hash(seed, index) (ties by index).
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
from bioprune.engine.runtime.errors import UsageError

STRATEGIES = ("topk", "cci", "random")


class SelectionError(ValueError, UsageError):
    """Bad selection request (strategy, budget, parameters) or bad scores."""


def cut_size(n: int, beta: float) -> int:
    """c = floor(beta * n), evaluated in float64 like a plain implementation would."""
    if not (0.0 <= beta < 1.0):
        raise SelectionError(f"--hard-cutoff must be in [0, 1), got {beta}")
    return int(math.floor(float(beta) * int(n)))


def budget_range(strategy: str, n: int, beta: float = 0.05) -> tuple[int, int]:
    """Allowed budgets (inclusive) for ``strategy`` over n scored samples."""
    if strategy not in STRATEGIES:
        raise SelectionError(f"unknown strategy {strategy!r}; "
                             f"choose one of {', '.join(STRATEGIES)}")
    if strategy == "cci":
        return 1, n - cut_size(n, beta)
    return 1, n


def check_budget(strategy: str, budget: int, n: int, beta: float = 0.05) -> int:
    lo, hi = budget_range(strategy, n, beta)
    if not isinstance(budget, (int, np.integer)):
        raise SelectionError(f"budget must be an integer, got {budget!r}")
    if not lo <= budget <= hi:
        if strategy == "cci":
            why = (f"cci keeps at most n - floor(beta*n) = {n} - {cut_size(n, beta)} = {hi} "
                   f"samples (hard cut-off beta = {beta})")
        else:
            why = f"{strategy} keeps between 1 and n = {n} samples"
        raise SelectionError(f"budget {budget} is out of range: allowed {lo}..{hi} ({why})")
    return int(budget)


def budget_from_fraction(fraction: float, n: int) -> int:
    """--fraction F: budget = floor(F * n) (exact rational arithmetic on F's decimal form)."""
    if not (0.0 < fraction <= 1.0):
        raise SelectionError(f"--fraction must be in (0, 1], got {fraction}")
    return int(math.floor(Fraction(str(fraction)) * n))


def check_strata(strata: int) -> int:
    if not isinstance(strata, (int, np.integer)) or not 1 <= strata <= 4096:
        raise SelectionError(f"--strata must be an integer in 1..4096, got {strata!r}")
    return int(strata)


def stratum_of(score: np.ndarray, lo: float, hi: float, K: int) -> np.ndarray:
    """min(K-1, floor((s - lo) / (hi - lo) * K)) in float64; all 0 when hi == lo. int64."""
    s = np.asarray(score, dtype=np.float64)
    if hi == lo:
        return np.zeros(s.shape, dtype=np.int64)
    t = s - lo
    t /= (hi - lo)
    t *= K
    np.floor(t, out=t)
    np.clip(t, 0, K - 1, out=t)
    return t.astype(np.int64)


def stratum_edges(lo: float, hi: float, K: int) -> list[float]:
    """Nominal boundaries lo + (hi - lo) * j / K, j = 0..K (the formula above is authoritative)."""
    return [float(lo + (hi - lo) * j / K) for j in range(K + 1)]


def strata_budgets(sizes, budget: int) -> np.ndarray:
    """Algorithm 1: visit strata by (size ascending, stratum number ascending); each gets
    min(size, floor(budget_left / strata_left)). Total == budget whenever sum(sizes) >= budget."""
    sizes = np.asarray(sizes, dtype=np.int64)
    K = sizes.size
    order = np.lexsort((np.arange(K), sizes))       # by size, then stratum number
    out = np.zeros(K, dtype=np.int64)
    left = int(budget)
    for i, j in enumerate(order):
        give = min(int(sizes[j]), left // (K - i))
        out[j] = give
        left -= give
    return out


def quantile_rank(q: float, n: int) -> int:
    """Nearest-rank quantile: the r-th smallest score, r = max(1, ceil(q * n))."""
    return max(1, min(n, math.ceil(Fraction(str(q)) * n)))
