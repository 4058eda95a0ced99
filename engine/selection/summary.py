"""The closing summary a selection prints (rank 0), from its ``selection.json`` report: what was
kept of how many, CCI's cut-off and picks per stratum, the coreset's score range against the
corpus's, and Spearman(score, length) with the warning the scoring summary gives
(:mod:`bioprune.engine.io.length_bias`), so a user sees at the console when the strata are
length bins."""
from __future__ import annotations

import json
import math
from pathlib import Path

from bioprune.engine.io.length_bias import length_lines

PER_LINE = 10    # strata per line of the picks table


def summary_lines(report: dict, rho: float | None = None) -> list[str]:
    """The summary of one selection; ``rho`` = Spearman(score, length) of the corpus's scores
    (None or nan: not known, no line)."""
    n, k = report["n"], report["selected"]
    lines = [f"{report['strategy']}: {k:,} of {n:,} selected ({k / n:.2%}), "
             f"budget {report['budget']:,}"]
    if "dedup" in report:
        lines.append(f"among {report['dedup']['representatives']:,} cluster representatives")
    if "clusters" in report:
        lines.append(f"{report['clusters']:,} clusters, "
                     f"{report.get('representatives_selected', 0):,} representatives picked")
    cut = report.get("cut")
    if cut and cut.get("dropped"):
        lines.append(f"hard cut-off {cut['hard_cutoff']:g}: the {cut['dropped']:,} highest "
                     f"scores dropped (above {cut['retained_max_score']:.4g})")
    lines += _strata_lines(report.get("strata"))
    corpus, core = report.get("score_summary"), report.get("selected_summary")
    if corpus and core:
        lines.append(f"scores: coreset {core['min']:.4g} .. {core['max']:.4g} (mean "
                     f"{core['mean']:.4g}); corpus {corpus['min']:.4g} .. {corpus['max']:.4g} "
                     f"(mean {corpus['mean']:.4g})")
    if rho is not None and not math.isnan(rho):
        lines += length_lines(rho)
    return lines


def _strata_lines(strata: dict | None) -> list[str]:
    """CCI: picked / size of every stratum, lowest scores first, PER_LINE strata a line."""
    if not strata:
        return []
    cells = [f"{p}/{s}" for p, s in zip(strata["picks"], strata["sizes"])]
    lines = [f"picks per stratum (picked/size, lowest scores first; K = {strata['K']}):"]
    for start in range(0, len(cells), PER_LINE):
        stop = min(start + PER_LINE, len(cells))
        lines.append(f"  {start:>3}-{stop - 1:<3} " + " ".join(cells[start:stop]))
    return lines


def print_summary(report: dict, scores_dir=None, plotted_rho: float | None = None) -> None:
    """Print the summary; ρ is the scoring run's (its manifest), else the one of the score vs
    length plot just drawn, else left out. No ``scores_dir``: the scores were not used."""
    rho = None
    if scores_dir is not None:
        rho = scored_length_spearman(scores_dir)
        rho = plotted_rho if rho is None else rho
    for line in summary_lines(report, rho):
        print(line, flush=True)


def scored_length_spearman(scores_dir) -> float | None:
    """Spearman(score, length) that the scoring run recorded in its manifest (RUN/manifest.json
    beside RUN/scores), or None when there is none."""
    try:
        m = json.loads((Path(scores_dir).absolute().parent / "manifest.json").read_text())
        return float(m["length_spearman"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
