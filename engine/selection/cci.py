"""CCI's own passes of the exact selector (:func:`bioprune.engine.selection.exact.select`): after
the hard cut-off's radix rounds, stratum codes for every retained sample, Algorithm 1 budgets from
the all-reduced stratum sizes, and hashed picks inside each stratum by radix selection."""
from __future__ import annotations

import numpy as np

from bioprune.engine.runtime.collectives import chunks
from bioprune.engine.runtime.hashing import SELECT, hash_keys
from bioprune.engine.selection.radix import KEEP, TAKE, lut_from_hist, radix_take
from bioprune.engine.selection.rules import strata_budgets, stratum_edges, stratum_of
from bioprune.engine.selection.state import Selection, concat, radix_candidates

_SBITS = 8          # first digit of the within-stratum keys: K x 256 bins stay in the CPU caches


def cci_picks(run: Selection) -> np.ndarray:
    """CCI after the cut-off's first radix round (``lut1`` over the ranking digits ``top``: TAKE
    = surely cut; the candidates' radix rounds give the rest of the cut). Strata over the
    retained range [gmin, hi], budgets by Algorithm 1, hashed picks inside each stratum.
    Returns the local selected positions."""
    comm, index, score, top, lut1 = run.comm, run.index, run.score, run.top, run.lut1
    n, budget, beta, K, seed, c = run.n, run.budget, run.beta, run.K, run.seed, run.c
    lo, hi = run.gmin, float(run.vals[-1])
    cut_keep = np.sort(run.keep_pos[radix_candidates(run)])
    run.take_pos = run.keep_pos = None
    report, lap = run.report, run.lap
    N = index.size
    nb = 1 << _SBITS
    sentinel = K * nb
    ctype = np.uint16 if sentinel < (1 << 16) else np.uint32
    # pass S: stratum and first key digit as one code per sample; cut samples get code K * 256
    codes = np.empty(N, dtype=ctype)
    hist = np.zeros((K + 1) * nb, dtype=np.int64)
    shift = np.uint64(64 - _SBITS)
    for a, b in chunks(N):
        code = stratum_of(score[a:b], lo, hi, K).astype(ctype)   # the rule, in one place
        code *= ctype(nb)
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
    take_pos = concat(take_parts)
    keep_pos = concat(keep_parts)
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


