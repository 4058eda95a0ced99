"""Selection outputs (DESIGN.md, "Run directory"), written by rank 0, each atomically:

- ``coreset.npy``          int64 corpus indices, ascending
- ``selection.json``       strategy, parameters, n, budget, per-stratum edges / sizes / budgets /
                           picks, score summary, plot histogram
- ``score_histogram.png``  log-count histogram of all scores (from the all-reduced bin counts) with
                           the strata edges, the hard cut-off and the picked mass
- ``coreset.fasta``        with the corpus given: the chosen input records unchanged (header
                           line and residues as in the input files)
- ``coreset.tsv``          with the corpus given: index, id, score, stratum (CCI) per coreset
                           record, for joins on record ids (pandas, ``datasets.filter``, seqkit)
- ``score_vs_length.png``  score against sequence length, picked samples highlighted, with
                           Spearman(score, length): shows when strata are really length bins
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bioprune.engine.io.atomic import atomic_path, save_npy, write_json

CORESET = "coreset.npy"
REPORT = "selection.json"
PLOT = "score_histogram.png"
FASTA = "coreset.fasta"
TABLE = "coreset.tsv"
LENGTH_PLOT = "score_vs_length.png"


def write_outputs(out_dir, indices: np.ndarray, report: dict, plot: bool = True) -> dict:
    """Write coreset.npy, selection.json and the histogram PNG; returns {name: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    idx = np.ascontiguousarray(indices, dtype=np.int64)
    if idx.size > 1 and not (np.diff(idx) > 0).all():
        raise ValueError("coreset indices must be strictly ascending")
    paths = {"coreset": out / CORESET, "report": out / REPORT}
    save_npy(paths["coreset"], idx)
    write_json(paths["report"], report)
    if plot:
        paths["plot"] = out / PLOT
        plot_histogram(report, paths["plot"])
    return paths


def plot_histogram(report: dict, path) -> None:
    """Log-count histogram of all scores, picked mass, strata edges and the hard cut-off."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    hist = report["histogram"]
    edges = np.asarray(hist["edges"], dtype=np.float64)
    counts = np.asarray(hist["counts"], dtype=np.float64)
    picked = np.asarray(hist["picked"], dtype=np.float64)
    fig, ax = plt.subplots(figsize=(9, 4.8), dpi=110)
    ax.stairs(counts, edges, fill=True, color="0.75", label=f"all scores (n = {report['n']:,})")
    if picked.any():
        ax.stairs(picked, edges, fill=True, color="tab:blue", alpha=0.85,
                  label=f"picked ({report['strategy']}, {report['budget']:,})")
    ax.set_yscale("log")
    ax.set_ylim(bottom=0.8)
    strata = report.get("strata")
    if strata:
        for j, e in enumerate(strata["edges"]):
            ax.axvline(e, color="tab:green", lw=0.5, alpha=0.6,
                       label=f"strata edges (K = {strata['K']})" if j == 0 else None)
    cut = report.get("cut")
    if cut and cut.get("dropped"):
        x = cut["retained_max_score"]
        ax.axvline(x, color="tab:red", lw=1.5,
                   label=f"hard cut-off: top {cut['hard_cutoff']:g} dropped ({cut['dropped']:,})")
        ax.axvspan(x, edges[-1], color="tab:red", alpha=0.08)
    ax.set_xlabel("self-influence score")
    ax.set_ylabel("count (log)")
    ax.set_title(f"{report['strategy']}: {report['budget']:,} of {report['n']:,} samples")
    ax.legend(loc="upper right", fontsize=8)
    _save(fig, path)


def write_table(corpus, indices, scores, report: dict, path) -> None:
    """coreset.tsv: one row per coreset record (ascending index): its corpus index, record id,
    score (empty when the strategy used none) and CCI stratum (empty for other strategies)."""
    from bioprune.engine.io.atomic import write_text
    from bioprune.engine.selection.rules import stratum_of

    idx = np.asarray(indices, dtype=np.int64)
    strata = report.get("strata") or {}
    stratum = (stratum_of(scores, strata["lo"], strata["hi"], strata["K"])
               if scores is not None and "K" in strata else None)
    lines = ["index\tid\tscore\tstratum"]
    for k, i in enumerate(idx.tolist()):
        rid = corpus.record_id(i).replace("\t", " ").replace("\n", " ")
        sc = "" if scores is None else repr(float(scores[k]))
        st = "" if stratum is None else str(int(stratum[k]))
        lines.append(f"{i}\t{rid}\t{sc}\t{st}")
    write_text(path, "\n".join(lines) + "\n")


def write_fasta(corpus, indices, path) -> int:
    """coreset.fasta: the chosen records as they stand in the inputs (header line and residues
    byte for byte), re-read from them and checked against the corpus; atomic."""
    from bioprune.engine.data.original_records import write_original_fasta

    return write_original_fasta(corpus, np.asarray(indices, dtype=np.int64), Path(path))


def plot_score_vs_length(scores_dir, picked, path, max_points: int = 200_000) -> float:
    """Scatter of score (log) against length over the scores directory (rows on a fixed stride
    of the corpus index when there are more than ``max_points``), the picked samples in colour;
    returns Spearman(score, length) of the plotted rows."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from bioprune.engine.io import scores as scores_io
    from bioprune.engine.io.length_bias import spearman

    parts = scores_io.list_parts(scores_dir)
    n = sum(scores_io.part_rows(p) for p in parts)
    stride = max(1, -(-n // max_points))
    cols = {"index": [], "score": [], "length": []}
    for p in parts:
        c = scores_io.read_scores(scores_dir, [p], tuple(cols))
        keep = c["index"] % stride == 0
        for k in cols:
            cols[k].append(c[k][keep])
    idx, score, length = (np.concatenate(cols[k]) if cols[k] else np.empty(0) for k in cols)
    rho = spearman(score, length)
    sel = np.isin(idx, np.asarray(picked if picked is not None else [], dtype=np.int64))
    fig, ax = plt.subplots(figsize=(7, 4.8), dpi=110)
    ax.scatter(length[~sel], score[~sel], s=3, color="0.6", alpha=0.5, lw=0,
               label=f"all (n = {n:,}{'' if stride == 1 else f', every {stride}th plotted'})")
    if sel.any():
        ax.scatter(length[sel], score[sel], s=4, color="tab:blue", alpha=0.8, lw=0, label="picked")
    if len(score) and (score > 0).all():
        ax.set_yscale("log")
    ax.set_xlabel("length (residues scored)")
    ax.set_ylabel("self-influence score")
    ax.set_title(f"score vs length: Spearman ρ = {rho:+.3f}")
    ax.legend(loc="best", fontsize=8)
    _save(fig, path)
    return rho


def _save(fig, path) -> None:
    """Write a figure as PNG atomically and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
