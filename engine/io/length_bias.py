"""Does a score rank mostly by sequence length? Spearman(score, length) over a scores directory,
and the closing-summary lines that scoring and selection both print about it (a warning, with
what to do, when |ρ| is large: CCI's strata are then mostly length bins)."""
from __future__ import annotations

import numpy as np

# |Spearman(score, length)| above this draws the warning (the protein study's scores: -0.75)
LENGTH_RHO = 0.5


def spearman(a, b) -> float:
    """Spearman's ρ (average ranks for ties); nan with fewer than 2 distinct values."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def length_spearman(scores_dir, max_rows: int = 2_000_000) -> float:
    """Spearman(score, length) over the parts of ``scores_dir`` (every row when there are at
    most ``max_rows``, else the rows whose corpus index falls on a fixed stride)."""
    from bioprune.engine.io import scores as scores_io

    parts = scores_io.list_parts(scores_dir)
    n = sum(scores_io.part_rows(p) for p in parts)
    stride = max(1, -(-n // max_rows))
    s, L = [], []
    for p in parts:
        cols = scores_io.read_scores(scores_dir, [p], ("index", "score", "length"))
        keep = cols["index"] % stride == 0
        s.append(cols["score"][keep])
        L.append(cols["length"][keep])
    if not s:
        return float("nan")
    return spearman(np.concatenate(s), np.concatenate(L))


def length_lines(rho: float) -> list[str]:
    """``Spearman(score, length) = ρ``, and a warning with what to do when |ρ| > LENGTH_RHO."""
    lines = [f"Spearman(score, length) = {rho:+.2f}"]
    if abs(rho) > LENGTH_RHO:
        lines.append(f"warning: the score ranks largely by length (Spearman {rho:+.2f}); CCI's "
                     "strata are then mostly length bins and a coreset's lengths are skewed: "
                     "compare it with --strategy random at the same budget before trusting it "
                     "(on RNA a smaller --damping-alpha lowers |Spearman|)")
    return lines
