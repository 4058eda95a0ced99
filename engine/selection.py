"""Distributed exact coreset selection: Top-I, CCI and Random over sharded scores.

``select(index, score, strategy, budget, ...)`` is collective over the current process group
(torch.distributed, gloo on the CPU / NCCL on GPUs; world = 1 without one). Each rank passes its
own share of (corpus index, score) rows; the result is the same coreset whatever the number of
ranks or the sharding, following DESIGN.md's exact rules (see :mod:`.selection_rules`).

How (no rank ever holds more than its share, O(K x 65536) histograms and the selected rows):
- scores map to uint64 keys whose ascending order is the descending score order
  (:func:`.selection_dist.encode_desc`); with the corpus index this is the total order of the
  ranking. Random / within-stratum order is (hash(seed, index), index).
- Thresholds are found by radix selection on 16-bit digits: one all-reduced 65536-bin histogram
  per digit round (per open group, i.e. per stratum for CCI). The first round is a full pass over
  the local share; the elements whose digit equals the threshold digit become the (few)
  candidates of the later rounds.
- CCI: radix-select the hard cut-off, all-reduce hi/lo, one pass assigns strata and the first
  digit of each sample's key (stored as a uint32 code), one all-reduced (K x 65536) histogram
  gives stratum sizes (hence Algorithm 1's budgets) and the first digit round of all strata at
  once; later rounds run on candidates only.
- Only the m selected corpus indices travel, to rank 0 (point-to-point), which sorts them.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from .hashing import SELECT, hash_keys
from .scores_io import ScoresError
from .selection_dist import (
    CHUNK, KEEP, NBINS, NONFINITE_DIGITS, TAKE, Comm, agree, check_permutation, chunks, decode_desc, encode_desc,
    lut_from_hist, nonfinite_error, radix_take, radix_values, tune_malloc,
)
from .selection_rules import (
    STRATEGIES, SelectionError, budget_range, check_budget, check_strata, cut_size,
    quantile_rank, stratum_edges, strata_budgets,
)

QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)
HIST_BINS = 100
_TOP = np.uint64(64 - 16)
_BLOCK = 1 << 22          # elements per block of stored-code histogramming

__all__ = ["select", "SelectionResult", "SelectionError", "ScoresError", "STRATEGIES",
           "QUANTILES", "budget_range"]


@dataclasses.dataclass
class SelectionResult:
    """``indices``: the coreset (int64 corpus indices, ascending) on rank 0, None elsewhere.
    ``local_indices``: the selected corpus indices held by this rank (unsorted).
    ``report``: strategy, parameters, n, budget, strata, score summary, histogram (all ranks)."""

    indices: np.ndarray | None
    local_indices: np.ndarray
    report: dict[str, Any]


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
    t_start = time.perf_counter()
    tune_malloc()
    comm = comm or Comm()
    timings: dict[str, float] = {}
    tick = [time.perf_counter()]

    def lap(name):
        now = time.perf_counter()
        timings[name] = round(now - tick[0], 4)
        tick[0] = now

    # ---- request and shapes (collective agreement before any heavy work)
    err = None
    try:
        index = _as_numpy(index, np.int64)
        score = _as_numpy(score, np.float64)
        if index.shape != score.shape:
            err = f"index and score have different lengths ({index.size} vs {score.size})"
    except Exception as e:  # noqa: BLE001
        err = f"bad input arrays: {e}"
        index = np.zeros(0, np.int64)
        score = np.zeros(0, np.float64)
    err = agree(comm, err)
    if err:
        raise SelectionError(err)
    if strategy not in STRATEGIES:
        raise SelectionError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    K = check_strata(strata) if strategy == "cci" else int(strata)
    total = comm.sum_int(index.size)
    if n is not None and int(n) != total:
        raise ScoresError(f"the scores hold {total} rows but _SUCCESS says {n}")
    n = total
    if n == 0:
        raise ScoresError("no scores to select from (0 rows)")
    beta = float(hard_cutoff)
    c = cut_size(n, beta) if strategy == "cci" else 0
    budget = check_budget(strategy, budget, n, beta)
    N = index.size
    # index range (always) and exact permutation of 0..n-1 (``validate``), before hashing
    check_permutation(comm, index, n, total=total, error=ScoresError, presence=validate)
    lap("check_indices")

    # ---- pass A: min / max / sum and the first digit of the ranking key (for Random also of
    # the random keys, kept as uint16 codes for pass X)
    rnd = strategy == "random"
    h = np.zeros(2 * NBINS if rnd else NBINS, dtype=np.int64)
    codes16 = np.empty(N, dtype=np.uint16) if rnd else None
    mn, mx, sm = np.inf, -np.inf, 0.0
    for a, b in chunks(N):
        s = score[a:b]
        mn = min(mn, float(s.min()))
        mx = max(mx, float(s.max()))
        sm += float(s.sum())
        h[:NBINS] += np.bincount((encode_desc(s) >> _TOP).astype(np.intp), minlength=NBINS)
        if rnd:
            cd = (hash_keys(seed, index[a:b], SELECT) >> _TOP).astype(np.uint16)
            codes16[a:b] = cd
            h[NBINS:] += np.bincount(cd, minlength=NBINS)
    h = comm.allreduce(h)
    lap("pass_stats")
    h_d = h[:NBINS]
    nonfinite = int(h_d[NONFINITE_DIGITS].sum())
    if nonfinite:
        msg = nonfinite_error(comm, index, score)
        raise ScoresError(msg or f"{nonfinite} score(s) are NaN or infinite")
    gmin = comm.min_float(mn)
    gmax = comm.max_float(mx)
    ssum = float(comm.allreduce(np.array([sm], dtype=np.float64))[0])

    # order statistics wanted by value (position in the descending ranking, 1-based):
    # quantiles (nearest rank) and, for CCI, hi = the best retained score (position c + 1)
    positions = [n - quantile_rank(q, n) + 1 for q in quantiles]
    if strategy == "cci":
        positions.append(c + 1)
    cum_d = np.cumsum(h_d)
    v_lut = np.zeros(NBINS, dtype=bool)
    v_digit, v_need = [], []
    for p in positions:
        b = int(np.searchsorted(cum_d, p, side="left"))
        v_digit.append(b)
        v_need.append(p - (int(cum_d[b - 1]) if b else 0))
        v_lut[b] = True

    # ---- first radix round of the main selection (Top-I: k best; CCI: the c best to drop;
    # Random: m smallest keys)
    if strategy == "topk":
        lut1, left1 = lut_from_hist(h_d, [budget])
    elif strategy == "cci":
        lut1, left1 = lut_from_hist(h_d, [c])
    else:
        lut1, left1 = lut_from_hist(h[NBINS:], [budget])
    lut1 = lut1[0]

    # ---- pass X: plot histogram, first-round TAKE / KEEP positions, order-statistic candidates
    span = gmax - gmin
    hist_counts = np.zeros(hist_bins, dtype=np.int64)
    take_parts, keep_parts, vkeys = [], [], []
    for a, b in chunks(N):
        s = score[a:b]
        d = encode_desc(s)
        top = (d >> _TOP).astype(np.intp)
        hist_counts += np.bincount(_bins(s, gmin, span, hist_bins), minlength=hist_bins)
        st = lut1[codes16[a:b]] if rnd else lut1[top]
        tk = np.flatnonzero(st == TAKE)
        kp = np.flatnonzero(st == KEEP)
        if tk.size:
            take_parts.append(tk + a)
        if kp.size:
            keep_parts.append(kp + a)
        vm = v_lut[top]
        if vm.any():
            vkeys.append(d[vm])
    del codes16
    take_pos = _cat(take_parts)
    keep_pos = _cat(keep_parts)
    del take_parts, keep_parts
    hist_counts = comm.allreduce(hist_counts)
    lap("pass_first_round")
    vals = decode_desc(radix_values(comm, _cat(vkeys, np.uint64), v_digit, v_need))
    del vkeys
    qvals = vals[:len(quantiles)]
    lap("order_statistics")

    # ---- remaining radix rounds on the candidates
    if rnd:
        ckey = hash_keys(seed, index[keep_pos], SELECT)
    else:
        ckey = encode_desc(score[keep_pos])
    m = radix_take(comm, ckey, index[keep_pos], np.zeros(keep_pos.size, np.int64), left1, n)
    lap("radix_rounds")
    report: dict[str, Any] = {}

    if strategy in ("topk", "random"):
        sel_pos = np.concatenate([take_pos, keep_pos[m]])
    else:
        hi = float(vals[-1])
        sel_pos = _cci(comm, index, score, n, budget, beta, K, seed, lut1, keep_pos[m],
                       gmin, hi, report, lap)
    del take_pos, keep_pos

    # ---- outputs: picked histogram, summaries, gather to rank 0
    picked = score[sel_pos]
    picked_hist = comm.allreduce(np.bincount(_bins(picked, gmin, span, hist_bins),
                                             minlength=hist_bins).astype(np.int64))
    n_sel = int(picked_hist.sum())
    psum = float(comm.allreduce(np.array([picked.sum()], np.float64))[0])
    pmin = comm.min_float(float(picked.min()) if picked.size else np.inf)
    pmax = comm.max_float(float(picked.max()) if picked.size else -np.inf)
    if n_sel != budget:
        raise RuntimeError(f"internal error: selected {n_sel} != budget {budget}")
    local_indices = index[sel_pos]
    indices = None
    if gather:
        parts = comm.gather_to_root(local_indices)
        if parts is not None:
            indices = np.sort(np.concatenate(parts).astype(np.int64))
    lap("gather")
    out = {
        "strategy": strategy,
        "parameters": {"budget": budget, "seed": int(seed),
                       **({"hard_cutoff": beta, "strata": K} if strategy == "cci" else {})},
        "n": n,
        "budget": budget,
        "selected": n_sel,
        **report,
        "score_summary": {
            "min": gmin, "max": gmax, "mean": ssum / n,
            "quantiles": {f"{q:g}": float(v) for q, v in zip(quantiles, qvals)},
            "quantile_rule": "nearest rank: the ceil(q*n)-th smallest score",
        },
        "selected_summary": {"min": pmin, "max": pmax, "mean": psum / budget},
        "histogram": {
            "edges": _hist_edges(gmin, gmax, hist_bins),
            "counts": hist_counts.tolist(),
            "picked": picked_hist.tolist(),
        },
        "world_size": comm.world,
    }
    timings["total"] = round(time.perf_counter() - t_start, 4)
    out["timings_s"] = timings
    out["allreduce_rounds"] = comm.rounds
    return SelectionResult(indices=indices, local_indices=local_indices, report=out)


def _cci(comm, index, score, n, budget, beta, K, seed, lut1, cut_keep, lo, hi, report, lap):
    """CCI after the cut-off's first radix round (``lut1``: TAKE digits are cut; ``cut_keep``:
    positions of the cut samples among the candidates). Returns the local selected positions."""
    N = index.size
    c = cut_size(n, beta)
    cut_keep = np.sort(cut_keep)
    # pass S: strata and first key digit, as uint32 codes; cut samples get stratum K
    codes = np.empty(N, dtype=np.uint32)
    sentinel = K * NBINS
    hist = np.zeros((K + 1) * NBINS, dtype=np.int64)
    span = hi - lo
    for a0, b0 in chunks(N, _BLOCK):
        for a, b in chunks(b0 - a0, CHUNK):
            a += a0
            b += a0
            s = score[a:b]
            if span > 0:
                t = s - lo
                t /= span
                t *= K
                np.floor(t, out=t)
                np.clip(t, 0, K - 1, out=t)
                st = t.astype(np.uint32)
            else:
                st = np.zeros(b - a, dtype=np.uint32)
            code = (st << np.uint32(16)) | (hash_keys(seed, index[a:b], SELECT) >> _TOP).astype(np.uint32)
            if c:
                cut = lut1[(encode_desc(s) >> _TOP).astype(np.intp)] == TAKE
                i0, i1 = np.searchsorted(cut_keep, [a, b])
                cut[cut_keep[i0:i1] - a] = True
                code[cut] = sentinel
            codes[a:b] = code
        hist += np.bincount(codes[a0:b0], minlength=(K + 1) * NBINS)
    lap("pass_strata")
    hist = comm.allreduce(hist[:sentinel]).reshape(K, NBINS)
    sizes = hist.sum(axis=1)
    budgets = strata_budgets(sizes, budget)
    lut2, left2 = lut_from_hist(hist, budgets)
    lut2 = np.concatenate([lut2.ravel(), np.zeros(NBINS, np.uint8)])
    # pass P: surely picked / candidates per stratum
    take_parts, keep_parts = [], []
    for a, b in chunks(N):
        st = lut2[codes[a:b]]
        tk = np.flatnonzero(st == TAKE)
        kp = np.flatnonzero(st == KEEP)
        if tk.size:
            take_parts.append(tk + a)
        if kp.size:
            keep_parts.append(kp + a)
    take_pos = _cat(take_parts)
    keep_pos = _cat(keep_parts)
    lap("pass_picks")
    grp = (codes[keep_pos] >> np.uint32(16)).astype(np.int64)
    ckey = hash_keys(seed, index[keep_pos], SELECT)
    m2 = radix_take(comm, ckey, index[keep_pos], grp, left2, n)
    sel_pos = np.concatenate([take_pos, keep_pos[m2]])
    picks = comm.allreduce(np.bincount((codes[sel_pos] >> np.uint32(16)).astype(np.intp),
                                       minlength=K + 1)[:K].astype(np.int64))
    del codes
    lap("radix_strata")
    report["cut"] = {"hard_cutoff": beta, "dropped": c,
                     "rule": "drop the floor(beta*n) highest (score desc, index asc)",
                     "retained_max_score": hi}
    report["strata"] = {
        "K": K, "lo": lo, "hi": hi,
        "rule": "min(K-1, floor((s - lo) / (hi - lo) * K)) in float64; all 0 when hi == lo",
        "edges": stratum_edges(lo, hi, K),
        "sizes": sizes.tolist(),
        "budgets": budgets.tolist(),
        "picks": picks.tolist(),
        "visit_order": np.lexsort((np.arange(K), sizes)).tolist(),
    }
    if not np.array_equal(picks, budgets):
        raise RuntimeError("internal error: picks per stratum differ from the budgets")
    return sel_pos


def _bins(s, gmin, span, B):
    if span <= 0 or not np.isfinite(span):
        return np.zeros(s.size, dtype=np.intp)
    t = (s - gmin) / span * B
    np.floor(t, out=t)
    np.clip(t, 0, B - 1, out=t)
    return t.astype(np.intp)


def _hist_edges(gmin, gmax, B):
    if gmax <= gmin:
        return [float(gmin) - 0.5 + j / B for j in range(B + 1)]
    return [float(gmin + (gmax - gmin) * j / B) for j in range(B + 1)]


def _cat(parts, dtype=np.int64):
    if not parts:
        return np.zeros(0, dtype=dtype)
    return np.concatenate(parts).astype(dtype, copy=False)
