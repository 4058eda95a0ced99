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
from bioprune.engine.selection.radix import (
    KEEP, NBINS, NONFINITE_DIGITS, TAKE, Comm, agree, check_permutation, chunks, decode_desc,
    encode_desc, key_digits, lut_from_hist, nonfinite_error, radix_take, radix_values,
    tune_malloc,
)
from bioprune.engine.selection.rules import (
    STRATEGIES, SelectionError, budget_range, check_budget, check_strata, cut_size,
    quantile_rank, stratum_edges, strata_budgets,
)

QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)
HIST_BINS = 100
_TOP = np.uint64(64 - 16)

__all__ = ["select", "select_from_scores", "SelectionResult", "SelectionError", "ScoresError",
           "STRATEGIES", "QUANTILES", "budget_range"]


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

    # ---- pass A: min / max / sum; the first 16-bit digit of the ranking key of every sample
    # (kept as uint16: the later passes need no re-encoding) and its histogram; for Random also
    # the first digit of the random keys.
    rnd = strategy == "random"
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
    gmin = comm.min_float(mn) + 0.0          # + 0.0: -0.0 and 0.0 tie; report 0.0 either way
    gmax = comm.max_float(mx) + 0.0
    ssum = float(comm.allreduce(np.array([sm], dtype=np.float64))[0])

    # order statistics wanted by value (position in the descending ranking, 1-based):
    # quantiles (nearest rank) and, for CCI, hi = the best retained score (position c + 1)
    positions = [n - quantile_rank(q, n) + 1 for q in quantiles]
    if strategy == "cci":
        positions.append(c + 1)
    cum_d = np.cumsum(h_d)
    v_digit, v_need = [], []
    for p in positions:
        b = int(np.searchsorted(cum_d, p, side="left"))
        v_digit.append(b)
        v_need.append(p - (int(cum_d[b - 1]) if b else 0))

    # ---- first radix round of the main selection (Top-I: the k best; CCI: the c best, which
    # are dropped; Random: the m smallest keys)
    if strategy == "topk":
        lut1, left1 = lut_from_hist(h_d, [budget])
    elif strategy == "cci":
        lut1, left1 = lut_from_hist(h_d, [c])
    else:
        lut1, left1 = lut_from_hist(h[NBINS:], [budget])
    lut1 = lut1[0]
    # one table over the ranking digit: TAKE / KEEP of the main selection (not for Random) and
    # bit 2 = candidate of an order statistic
    lut_x = np.zeros(NBINS, dtype=np.uint8)
    if not rnd:
        lut_x |= lut1
    lut_x[v_digit] |= 4

    # ---- pass X: plot histogram; surely taken / candidate / order-statistic positions
    span = gmax - gmin
    hist_counts = np.zeros(hist_bins, dtype=np.int64)
    take_parts, keep_parts, v_parts = [], [], []
    for a, b in chunks(N):
        hist_counts += np.bincount(_bins(score[a:b], gmin, span, hist_bins), minlength=hist_bins)
        st = lut_x[top[a:b]]
        if rnd:
            st |= lut1[codes16[a:b]]
        nz = np.flatnonzero(st)
        if nz.size:
            sv = st[nz]
            nz += a
            take_parts.append(nz[(sv & 3) == TAKE])
            keep_parts.append(nz[(sv & 3) == KEEP])
            v_parts.append(nz[(sv & 4) != 0])
    del codes16
    take_pos, keep_pos, v_pos = _cat(take_parts), _cat(keep_parts), _cat(v_parts)
    del take_parts, keep_parts, v_parts
    hist_counts = comm.allreduce(hist_counts)
    lap("pass_first_round")
    v_top = top[v_pos]
    by_digit = {d: encode_desc(score[v_pos[v_top == d]]) for d in sorted(set(v_digit))}
    del v_pos, v_top
    vals = decode_desc(radix_values(comm, [by_digit[d] for d in v_digit],
                                    [d << 48 for d in v_digit], v_need, key_digits(16)))
    del by_digit
    qvals = vals[:len(quantiles)]
    lap("order_statistics")

    # ---- remaining radix rounds on the candidates
    if rnd:
        ckey = hash_keys(seed, index[keep_pos], SELECT)
    else:
        ckey = encode_desc(score[keep_pos])
    m = radix_take(comm, ckey, index[keep_pos], np.zeros(keep_pos.size, np.int64), left1, n, 48)
    lap("radix_rounds")
    report: dict[str, Any] = {}

    if strategy in ("topk", "random"):
        sel_pos = np.concatenate([take_pos, keep_pos[m]])
    else:
        hi = float(vals[-1])
        cut_keep = keep_pos[m]
        del take_pos, keep_pos
        sel_pos = _cci(comm, index, score, top, n, budget, beta, K, seed, lut1, cut_keep,
                       gmin, hi, report, lap)
    del top

    # ---- outputs: picked histogram, summaries, gather to rank 0
    picked = score[sel_pos]
    picked_hist = comm.allreduce(np.bincount(_bins(picked, gmin, span, hist_bins),
                                             minlength=hist_bins).astype(np.int64))
    n_sel = int(picked_hist.sum())
    psum = float(comm.allreduce(np.array([picked.sum()], np.float64))[0])
    pmin = comm.min_float(float(picked.min()) if picked.size else np.inf) + 0.0
    pmax = comm.max_float(float(picked.max()) if picked.size else -np.inf) + 0.0
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


_SBITS = 8          # first digit of the within-stratum keys: K x 256 bins stay in the CPU caches


def select_from_scores(scores_dir, strategy: str, budget: int | None = None,
                       fraction: float | None = None, comm: Comm | None = None,
                       **kwargs) -> SelectionResult:
    """Collective: read this rank's share of a finished scores directory and :func:`select`.
    Give ``budget`` or ``fraction`` (budget = floor(fraction * n))."""
    from bioprune.engine.io.scores import read_share
    from bioprune.engine.selection.rules import budget_from_fraction

    comm = comm or Comm()
    if (budget is None) == (fraction is None):
        raise SelectionError("give exactly one of budget and fraction")
    data, n = read_share(scores_dir, comm)
    if budget is None:
        budget = budget_from_fraction(fraction, n)
    return select(data["index"], data["score"], strategy, budget, n=n, comm=comm, **kwargs)


def _cci(comm, index, score, top, n, budget, beta, K, seed, lut1, cut_keep, lo, hi, report, lap):
    """CCI after the cut-off's first radix round (``lut1`` over the ranking digits ``top``: TAKE
    = surely cut; ``cut_keep``: the cut samples among the candidates). Returns the local selected
    positions."""
    N = index.size
    c = cut_size(n, beta)
    cut_keep = np.sort(cut_keep)
    nb = 1 << _SBITS
    sentinel = K * nb
    ctype = np.uint16 if sentinel < (1 << 16) else np.uint32
    # pass S: stratum and first key digit as one code per sample; cut samples get code K * 256
    codes = np.empty(N, dtype=ctype)
    hist = np.zeros((K + 1) * nb, dtype=np.int64)
    span = hi - lo
    shift = np.uint64(64 - _SBITS)
    for a, b in chunks(N):
        s = score[a:b]
        if span > 0:
            t = s - lo
            t /= span
            t *= K
            np.floor(t, out=t)
            np.clip(t, 0, K - 1, out=t)
            code = t.astype(ctype)
            code *= ctype(nb)
        else:
            code = np.zeros(b - a, dtype=ctype)
        code |= (hash_keys(seed, index[a:b], SELECT) >> shift).astype(ctype)
        if c:
            cut = lut1[top[a:b]] == TAKE
            i0, i1 = np.searchsorted(cut_keep, [a, b])
            cut[cut_keep[i0:i1] - a] = True
            code[cut] = sentinel
        codes[a:b] = code
        hist += np.bincount(code, minlength=(K + 1) * nb)
    lap("pass_strata")
    hist = comm.allreduce(hist[:sentinel]).reshape(K, nb)
    sizes = hist.sum(axis=1)
    budgets = strata_budgets(sizes, budget)
    lut2, left2 = lut_from_hist(hist, budgets, nb)
    lut2 = np.concatenate([lut2.ravel(), np.zeros(nb, np.uint8)])
    # pass P: surely picked / candidates per stratum
    take_parts, keep_parts = [], []
    for a, b in chunks(N):
        st = lut2[codes[a:b]]
        nz = np.flatnonzero(st)
        if nz.size:
            sv = st[nz]
            nz += a
            take_parts.append(nz[sv == TAKE])
            keep_parts.append(nz[sv == KEEP])
    take_pos = _cat(take_parts)
    keep_pos = _cat(keep_parts)
    lap("pass_picks")
    grp = (codes[keep_pos] // nb).astype(np.int64)
    ckey = hash_keys(seed, index[keep_pos], SELECT)
    m2 = radix_take(comm, ckey, index[keep_pos], grp, left2, n, 64 - _SBITS)
    sel_pos = np.concatenate([take_pos, keep_pos[m2]])
    picks = comm.allreduce(np.bincount((codes[sel_pos] // nb).astype(np.intp),
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


def _cat(parts, dtype=np.int64):
    if not parts:
        return np.zeros(0, dtype=dtype)
    return np.concatenate(parts).astype(dtype, copy=False)
