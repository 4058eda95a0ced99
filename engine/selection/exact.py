"""Distributed exact coreset selection: Top-I, CCI and Random over sharded scores.

``select(index, score, strategy, budget, ...)`` is collective over the current process group
(torch.distributed, gloo on the CPU / NCCL on GPUs; world = 1 without one). Each rank passes its
own share of (corpus index, score) rows; the result is the same coreset whatever the number of
ranks or the sharding, following DESIGN.md's exact rules (see :mod:`.selection_rules`).

How (no rank ever holds more than its share, 2 bytes per local sample of digit codes,
O(K x 65536) histograms and the selected rows):
- Scores map to uint64 keys whose ascending order is the descending score order
  (:func:`.selection_dist.encode_desc`, -0.0 == +0.0); with the corpus index this is the total
  order of the ranking. Random / within-stratum order is (hash(seed, index), index).
- Thresholds are found by radix selection: one all-reduced histogram per digit round (all
  groups at once, e.g. all strata). The first round is a full pass over the local share (16-bit
  digit: 65536 bins); the samples whose digit equals the threshold digit become the few
  candidates of the later rounds (remaining key digits, then index digits if keys tie).
- Top-I: pass A (stats + digit histogram), pass X (surely taken / candidates), rounds.
  CCI: the same for the hard cut-off c = floor(beta n); hi = the (c+1)-th value by an order
  statistic; pass S gives every retained sample a code stratum x 256 + first 8 bits of its key
  and one all-reduced (K x 256) histogram yields the stratum sizes, Algorithm 1's budgets and
  the first pick round of all strata; pass P extracts the picks; rounds on candidates.
  Random: as Top-I on the hash keys.
- Exact nearest-rank quantiles for the report by the same rounds (values only).
- Only the m selected corpus indices travel, to rank 0 (point-to-point), which sorts them.
- The index check (each corpus index exactly once) routes indices to owner ranks (all-to-all)
  and marks a presence array there: O(share) per rank.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from bioprune.engine.runtime.hashing import SELECT, hash_keys
from bioprune.engine.io.scores import ScoresError
from bioprune.engine.runtime.collectives import Comm, chunks, raise_together
from bioprune.engine.runtime.malloc import numpy_passes
from bioprune.engine.runtime.index_check import check_permutation, nonfinite_error
from bioprune.engine.selection.cci import cci_picks
from bioprune.engine.selection.radix import (
    KEEP, NBINS, NONFINITE_DIGITS, TAKE, decode_desc, encode_desc, key_digits, lut_from_hist,
    radix_values,
)
from bioprune.engine.selection.rules import (
    STRATEGIES, SelectionError, budget_range, check_budget, check_strata, cut_size,
    quantile_rank,
)
from bioprune.engine.selection.state import Selection, concat, radix_candidates

QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)
HIST_BINS = 100
_TOP = np.uint64(64 - 16)

__all__ = ["select", "SelectionResult", "SelectionError", "ScoresError",
           "STRATEGIES", "QUANTILES", "budget_range"]


@dataclasses.dataclass
class SelectionResult:
    """``indices``: the coreset (int64 corpus indices, ascending) on rank 0, None elsewhere.
    ``local_indices``: the selected corpus indices held by this rank (unsorted).
    ``report``: strategy, parameters, n, budget, strata, score summary, histogram (all ranks).
    ``scores``: the scores of ``indices``, in the same order (rank 0, when gathered)."""

    indices: np.ndarray | None
    local_indices: np.ndarray
    report: dict[str, Any]
    scores: np.ndarray | None = None


def _as_numpy(x, dtype) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):      # torch tensor (CPU: zero-copy)
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.dtype != dtype:
        a = a.astype(dtype)
    return a.reshape(-1)


def select(index, score, strategy: str, budget: int, hard_cutoff: float = 0.05,
           strata: int = 50, seed: int = 0, *, n: int | None = None, validate: bool = True,
           hist_bins: int = HIST_BINS, quantiles=QUANTILES, comm: Comm | None = None,
           gather: bool = True) -> SelectionResult:
    """Collective exact selection over the rows (``index``, ``score``) held by all ranks.

    ``budget``: number of samples to keep (Top-I k, CCI budget, Random m). ``n``: expected total
    number of rows (the ``_SUCCESS`` count), checked if given. ``validate``: check that the
    indices are exactly a permutation of 0..n-1 (exact, collective; the range check is always
    done). Errors (:class:`SelectionError` for the request, :class:`ScoresError` for the data) are
    raised on every rank together. ``gather=False`` leaves the selected indices on their ranks
    (``local_indices``).
    """
    with numpy_passes():   # chunk temporaries on the heap; the previous setting back after
        run = Selection(comm or Comm(), strategy, int(seed), hist_bins, tuple(quantiles))
        _check_request(run, index, score, budget, hard_cutoff, strata, n, validate)
        _pass_stats(run)
        _first_round(run)
        _order_statistics(run)
        if strategy == "cci":
            sel_pos = cci_picks(run)
        else:   # Top-I and Random: the surely taken plus the radix-selected candidates
            sel_pos = np.concatenate([run.take_pos, run.keep_pos[radix_candidates(run)]])
        run.top = None
        return _result(run, sel_pos, gather)


def _check_request(run: Selection, index, score, budget, hard_cutoff, strata, n, validate):
    """Inputs, strategy, budget and the corpus indices, agreed on every rank before heavy work."""
    comm, err = run.comm, None
    try:
        index = _as_numpy(index, np.int64)
        score = _as_numpy(score, np.float64)
        if index.shape != score.shape:
            err = f"index and score have different lengths ({index.size} vs {score.size})"
    except Exception as e:  # noqa: BLE001
        err = f"bad input arrays: {e}"
        index = np.zeros(0, np.int64)
        score = np.zeros(0, np.float64)
    raise_together(comm, err, SelectionError)
    strategy = run.strategy
    if strategy not in STRATEGIES:
        raise SelectionError(f"unknown strategy {strategy!r}; "
                             f"choose one of {', '.join(STRATEGIES)}")
    run.K = check_strata(strata) if strategy == "cci" else int(strata)
    total = comm.sum_int(index.size)
    if n is not None and int(n) != total:
        raise ScoresError(f"the scores hold {total} rows but _SUCCESS says {n}")
    if total == 0:
        raise ScoresError("no scores to select from (0 rows)")
    run.n, run.beta = total, float(hard_cutoff)
    run.c = cut_size(total, run.beta) if strategy == "cci" else 0
    run.budget = check_budget(strategy, budget, total, run.beta)
    # index range (always) and exact permutation of 0..n-1 (``validate``), before hashing
    check_permutation(comm, index, total, total=total, error=ScoresError, presence=validate)
    run.index, run.score = index, score
    run.lap("check_indices")


def _pass_stats(run: Selection) -> None:
    """Pass A: min / max / sum; the first 16-bit digit of the ranking key of every sample (kept
    as uint16: the later passes need no re-encoding) and its histogram; for Random also the
    first digit of the random keys."""
    index, score, N, rnd = run.index, run.score, run.index.size, run.random
    top = np.empty(N, dtype=np.uint16)
    h = np.zeros(2 * NBINS if rnd else NBINS, dtype=np.int64)
    codes16 = np.empty(N, dtype=np.uint16) if rnd else None
    mn, mx, sm = np.inf, -np.inf, 0.0
    for a, b in chunks(N):
        s = score[a:b]
        mn = min(mn, float(s.min()))
        mx = max(mx, float(s.max()))
        sm += float(s.sum())
        t = (encode_desc(s) >> _TOP).astype(np.uint16)
        top[a:b] = t
        h[:NBINS] += np.bincount(t, minlength=NBINS)
        if rnd:
            cd = (hash_keys(run.seed, index[a:b], SELECT) >> _TOP).astype(np.uint16)
            codes16[a:b] = cd
            h[NBINS:] += np.bincount(cd, minlength=NBINS)
    comm = run.comm
    run.h = comm.allreduce(h)
    run.top, run.codes16 = top, codes16
    run.lap("pass_stats")
    nonfinite = int(run.h[:NBINS][NONFINITE_DIGITS].sum())
    if nonfinite:
        msg = nonfinite_error(comm, index, score)
        raise ScoresError(msg or f"{nonfinite} score(s) are NaN or infinite")
    run.gmin = comm.min_float(mn) + 0.0      # + 0.0: -0.0 and 0.0 tie; report 0.0 either way
    run.gmax = comm.max_float(mx) + 0.0
    run.ssum = float(comm.allreduce(np.array([sm], dtype=np.float64))[0])


def _first_round(run: Selection) -> None:
    """The first radix round of the main selection (Top-I: the k best; CCI: the c best, which
    are dropped; Random: the m smallest keys) and pass X: plot histogram, surely taken /
    candidate / order-statistic positions."""
    h_d, rnd, n = run.h[:NBINS], run.random, run.n
    # order statistics wanted by value (position in the descending ranking, 1-based):
    # quantiles (nearest rank) and, for CCI, hi = the best retained score (position c + 1)
    positions = [n - quantile_rank(q, n) + 1 for q in run.quantiles]
    if run.strategy == "cci":
        positions.append(run.c + 1)
    cum_d = np.cumsum(h_d)
    run.v_digit, run.v_need = [], []
    for p in positions:
        b = int(np.searchsorted(cum_d, p, side="left"))
        run.v_digit.append(b)
        run.v_need.append(p - (int(cum_d[b - 1]) if b else 0))
    need = {"topk": run.budget, "cci": run.c, "random": run.budget}[run.strategy]
    lut1, run.left1 = lut_from_hist(run.h[NBINS:] if rnd else h_d, [need])
    run.lut1 = lut1 = lut1[0]
    # one table over the ranking digit: TAKE / KEEP of the main selection (not for Random) and
    # bit 2 = candidate of an order statistic
    lut_x = np.zeros(NBINS, dtype=np.uint8)
    if not rnd:
        lut_x |= lut1
    lut_x[run.v_digit] |= 4
    span = run.gmax - run.gmin
    hist_counts = np.zeros(run.hist_bins, dtype=np.int64)
    take_parts, keep_parts, v_parts = [], [], []
    for a, b in chunks(run.index.size):
        hist_counts += np.bincount(_bins(run.score[a:b], run.gmin, span, run.hist_bins),
                                   minlength=run.hist_bins)
        st = lut_x[run.top[a:b]]
        if rnd:
            st |= lut1[run.codes16[a:b]]
        nz = np.flatnonzero(st)
        if nz.size:
            sv = st[nz]
            nz += a
            take_parts.append(nz[(sv & 3) == TAKE])
            keep_parts.append(nz[(sv & 3) == KEEP])
            v_parts.append(nz[(sv & 4) != 0])
    run.codes16 = None
    run.take_pos, run.keep_pos, run.v_pos = concat(take_parts), concat(keep_parts), concat(v_parts)
    run.hist_counts = run.comm.allreduce(hist_counts)
    run.lap("pass_first_round")


def _order_statistics(run: Selection) -> None:
    """The quantiles (and CCI's hi) by value, by radix selection among their candidates."""
    v_top = run.top[run.v_pos]
    by_digit = {d: encode_desc(run.score[run.v_pos[v_top == d]]) for d in sorted(set(run.v_digit))}
    run.v_pos = None
    run.vals = decode_desc(radix_values(run.comm, [by_digit[d] for d in run.v_digit],
                                        [d << 48 for d in run.v_digit], run.v_need,
                                        key_digits(16)))
    run.lap("order_statistics")


def _result(run: Selection, sel_pos: np.ndarray, gather: bool) -> SelectionResult:
    """Picked histogram, summaries, and the selected indices gathered to rank 0."""
    comm, score, budget = run.comm, run.score, run.budget
    span = run.gmax - run.gmin
    picked = score[sel_pos]
    picked_hist = comm.allreduce(np.bincount(_bins(picked, run.gmin, span, run.hist_bins),
                                             minlength=run.hist_bins).astype(np.int64))
    n_sel = int(picked_hist.sum())
    psum = float(comm.allreduce(np.array([picked.sum()], np.float64))[0])
    pmin = comm.min_float(float(picked.min()) if picked.size else np.inf) + 0.0
    pmax = comm.max_float(float(picked.max()) if picked.size else -np.inf) + 0.0
    if n_sel != budget:
        raise RuntimeError(f"internal error: selected {n_sel} != budget {budget}")
    local_indices = run.index[sel_pos]
    indices = picked_scores = None
    if gather:
        parts = comm.gather_to_root(local_indices)
        # the scores travel as their 64 bits (the gather moves int64), exact
        score_parts = comm.gather_to_root(np.ascontiguousarray(score[sel_pos]).view(np.int64))
        if parts is not None:
            indices = np.concatenate(parts).astype(np.int64)
            order = np.argsort(indices, kind="stable")
            picked_scores = np.concatenate(score_parts).view(np.float64)[order]
            indices = indices[order]
    run.lap("gather")
    qvals = run.vals[:len(run.quantiles)]
    out = {
        "strategy": run.strategy,
        "parameters": {"budget": budget, "seed": run.seed,
                       **({"hard_cutoff": run.beta, "strata": run.K}
                          if run.strategy == "cci" else {})},
        "n": run.n,
        "budget": budget,
        "selected": n_sel,
        **run.report,
        "score_summary": {
            "min": run.gmin, "max": run.gmax, "mean": run.ssum / run.n,
            "quantiles": {f"{q:g}": float(v) for q, v in zip(run.quantiles, qvals)},
            "quantile_rule": "nearest rank: the ceil(q*n)-th smallest score",
        },
        "selected_summary": {"min": pmin, "max": pmax, "mean": psum / budget},
        "histogram": {
            "edges": _hist_edges(run.gmin, run.gmax, run.hist_bins),
            "counts": run.hist_counts.tolist(),
            "picked": picked_hist.tolist(),
        },
        "world_size": comm.world,
    }
    run.timings["total"] = round(time.perf_counter() - run.t_start, 4)
    out["timings_s"] = run.timings
    out["allreduce_rounds"] = comm.rounds
    return SelectionResult(indices=indices, local_indices=local_indices, report=out,
                           scores=picked_scores)


def _bins(s, gmin, span, B):
    """Equal-width plot bins over [gmin, gmin + span] (only for the histogram in the report)."""
    if span <= 0 or not np.isfinite(span):
        return np.zeros(s.size, dtype=np.intp)
    t = s - gmin
    t *= B / span
    i = t.astype(np.intp)                    # t >= 0: truncation is floor
    np.minimum(i, B - 1, out=i)
    return i


def _hist_edges(gmin, gmax, B):
    if gmax <= gmin:
        return [float(gmin) - 0.5 + j / B for j in range(B + 1)]
    return [float(gmin + (gmax - gmin) * j / B) for j in range(B + 1)]
