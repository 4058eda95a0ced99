"""What each arm's coreset holds, model-free: share of every source / family, MMseqs2 clusters
covered, length quantiles, beside the whole training corpus (composition.csv and a results.md
section). A coverage-aware selection should show here before any model is trained: a Random
coreset of a corpus that is 75 % one family is 75 % that family, and covers few clusters.

Per arm the coreset of each seed is read (``select-s<seed>``, or the one ``select`` of a
deterministic strategy) and the numbers are averaged over seeds.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bioprune.engine.io.atomic import write_rows_csv

QUANTILES = (0.1, 0.5, 0.9)


def _coresets(out: Path, arm: str, seeds) -> list[np.ndarray]:
    adir = out / "arms" / arm
    if (adir / "select" / "coreset.npy").exists():
        return [np.load(adir / "select" / "coreset.npy")]
    return [np.load(p) for s in seeds if (p := adir / f"select-s{s}" / "coreset.npy").exists()]


def describe(idx: np.ndarray, groups: np.ndarray, names: list[str], lengths: np.ndarray,
             reps: np.ndarray | None) -> dict:
    """One set of training-corpus indices: n, share per group, clusters covered, length
    quantiles."""
    row = {"n": int(len(idx))}
    counts = np.bincount(groups[idx], minlength=len(names))
    for k, name in enumerate(names):
        row[f"share@{name}"] = float(counts[k] / max(len(idx), 1))
    row["groups_covered"] = int((counts > 0).sum())
    if reps is not None:
        row["clusters_covered"] = int(len(np.unique(reps[idx])))
    for q, v in zip(QUANTILES, np.quantile(lengths[idx], QUANTILES) if len(idx) else [np.nan] * 3):
        row[f"length_q{int(q * 100)}"] = float(v)
    return row


def composition(study) -> list[dict]:
    """Rows for the corpus and every selected arm (means over seeds), in the study's arm order."""
    from bioprune.engine.data.corpus import load_corpus
    from bioprune.engine.experiments.config import arms as expand_arms

    out = study.out
    if not (out / "data" / "train_group.npy").exists():
        return []
    groups = np.load(out / "data" / "train_group.npy")
    names = json.loads((out / "data" / "groups.json").read_text())["names"]
    lengths = np.asarray(load_corpus([str(study.train_fa)], study.cfg["molecule"],
                                     study.cache).lengths)
    rep_path = out / "clusters" / "clusters.npy"
    reps = np.load(rep_path) if rep_path.exists() else None
    rows = [{"arm": "corpus", **describe(np.arange(len(groups)), groups, names, lengths, reps)}]
    for a in expand_arms(study.cfg):
        if a["strategy"] in ("full", "init"):
            continue
        sets = _coresets(out, a["name"], study.cfg["seeds"])
        if not sets:
            continue
        per = [describe(s, groups, names, lengths, reps) for s in sets]
        rows.append({"arm": a["name"], "seeds": len(per),
                     **{k: float(np.mean([p[k] for p in per])) for k in per[0]}})
    return rows


def write_composition(rows: list[dict], path: Path) -> None:
    if rows:
        write_rows_csv(path, rows)


def markdown(rows: list[dict]) -> str:
    """The results.md section: one row per arm, shares in %, the corpus first."""
    if not rows:
        return ""
    shares = [k for k in rows[0] if k.startswith("share@")]
    extra = [k for k in ("clusters_covered", "length_q10", "length_q50", "length_q90")
             if k in rows[0]]
    head = ["arm", "n", *[k.split("@", 1)[1] for k in shares], *extra]
    lines = ["## Composition of each coreset (model-free)", "",
             "Share of every source / family (% of the coreset), MMseqs2 clusters covered and "
             "length quantiles, averaged over the selection seeds; the first row is the whole "
             "training corpus.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["arm"], f"{r['n']:.0f}", *[f"{100 * r[k]:.1f}" for k in shares],
                 *[f"{r[k]:.0f}" for k in extra]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
