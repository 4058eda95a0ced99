"""Outputs of a study: results.csv, results.md (mean ± std per arm + the paper's questions answered
in numbers), one PNG per task (metric against retention rate, a line per strategy, error bars).

A result value is the mean over the probe seeds of one evaluation (one arm, one training seed);
mean ± std in results.md are over the training seeds (sample std, ddof = 1).
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from bioprune.engine.experiments.config import LABELS, STRATEGIES, arms as expand_arms
from bioprune.engine.io.atomic import atomic_path, write_text

COLUMNS = ["arm", "strategy", "rate", "seed", "task", "metric", "value"]
LOWER_IS_BETTER = ("ppl", "perplexity", "loss", "mse", "mae", "rmse")


def lower_is_better(metric: str) -> bool:
    return any(k in metric.lower() for k in LOWER_IS_BETTER)


def collect_rows(study) -> list[dict]:
    rows = []
    for arm in expand_arms(study.cfg):
        for seed in study.cfg["seeds"]:
            ej = study.out / "arms" / arm["name"] / f"s{seed}" / "eval" / "eval.json"
            if not ej.exists():
                continue
            tasks = json.loads(ej.read_text()).get("tasks", {})
            for task, res in tasks.items():
                for metric, m in res.get("metrics", {}).items():
                    v = m.get("mean") if isinstance(m, dict) else m
                    if v is None and isinstance(m, dict) and m.get("values"):
                        v = float(np.mean(m["values"]))
                    if v is None:
                        continue
                    rows.append({"arm": arm["name"], "strategy": arm["strategy"],
                                 "rate": arm["rate"], "seed": seed, "task": task,
                                 "metric": metric, "value": float(v)})
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            for r in rows:
                w.writerow({**r, "rate": f"{r['rate']:g}", "value": f"{r['value']:.6g}"})


def aggregate(rows: list[dict]) -> dict:
    """{(arm, task, metric): (mean, std, n)} over training seeds."""
    acc: dict = {}
    for r in rows:
        acc.setdefault((r["arm"], r["task"], r["metric"]), []).append(r["value"])
    out = {}
    for k, v in acc.items():
        a = np.asarray(v, dtype=float)
        out[k] = (float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else float("nan"), len(a))
    return out


def _fmt(mean: float, std: float, metric: str) -> str:
    if lower_is_better(metric) or abs(mean) > 10:
        return f"{mean:.3f} ± {std:.3f}" if not math.isnan(std) else f"{mean:.3f}"
    return f"{mean:.4f} ± {std:.4f}" if not math.isnan(std) else f"{mean:.4f}"


def _compare(agg, a: str, b: str, task: str, metric: str) -> str | None:
    if (a, task, metric) not in agg or (b, task, metric) not in agg:
        return None
    ma, sa, na = agg[(a, task, metric)]
    mb, sb, nb = agg[(b, task, metric)]
    d = ma - mb
    better = d < 0 if lower_is_better(metric) else d > 0
    # difference in units of its standard error over seeds (a rough guide, not a test)
    se = math.sqrt((sa ** 2 / na if na > 1 else 0) + (sb ** 2 / nb if nb > 1 else 0))
    z = f", {abs(d) / se:.1f} SE" if se > 0 else ""
    verdict = "yes" if better else ("tie" if d == 0 else "no")
    return f"{verdict} ({ma:.4g} vs {mb:.4g}, Δ {d:+.4g}{z})"


def write_markdown(study, rows: list[dict], path: Path) -> dict:
    cfg = study.cfg
    agg = aggregate(rows)
    all_arms = expand_arms(cfg)
    tm = [(t, m) for t in dict.fromkeys(r["task"] for r in rows)
          for m in dict.fromkeys(r["metric"] for r in rows if r["task"] == t)]
    lines = [f"# Pruning study: {cfg['name']}", "",
             f"Model {cfg['model']} {cfg['model_size']}; training corpus "
             f"{study.n_train} sequences (held-out part for `mlm`: data/heldout.fasta); "
             f"seeds {cfg['seeds']} (selection seed = training seed); training "
             + (f"compute-matched, {cfg['training']['steps']} optimizer steps per arm"
                if cfg["training"]["mode"] == "steps" else
                f"{cfg['training']['epochs']} epochs on each training set")
             + f", micro-batch {cfg['training']['micro_batch_size']} × {study.ranks} rank(s). "
             "Values: mean ± std over training seeds of the per-evaluation mean over probe seeds. "
             "↓ marks metrics where lower is better.", ""]
    arm_info = _arm_info(study)
    head = "| arm | n train | steps | " + " | ".join(
        f"{t} {m}{' ↓' if lower_is_better(m) else ''}" for t, m in tm) + " |"
    lines += [head, "|" + "---|" * (3 + len(tm))]
    for a in all_arms:
        if not any((a["name"], t, m) in agg for t, m in tm):
            continue
        info = arm_info.get(a["name"], {})
        cells = [_fmt(*agg[(a["name"], t, m)][:2], m) if (a["name"], t, m) in agg else "—"
                 for t, m in tm]
        lines.append(f"| {a['name']} | {info.get('n_train', '—')} | {info.get('steps', '—')} | "
                     + " | ".join(cells) + " |")
    # the paper's questions
    s = cfg["selection"]
    questions = []
    rates = sorted(set(s["rates"]))
    for r in rates:
        cci = f"cci@{r * 100:g}%"
        qs = [(f"CCI@{r * 100:g}% beats Random@{r * 100:g}%", f"random@{r * 100:g}%")]
        for mult in s["random_multiples"]:
            rr = round(r * mult, 6)
            target = "full" if rr >= 1 else f"random@{rr * 100:g}%"
            if any(a["name"] == target for a in all_arms):
                qs.append((f"CCI@{r * 100:g}% reaches Random at {mult}× ({'Full' if rr >= 1 else f'{rr * 100:g}%'})",
                           target))
        if not any(o == "full" for _, o in qs):
            qs.append((f"CCI@{r * 100:g}% reaches Full", "full"))
        qs.append((f"CCI@{r * 100:g}% beats Top-I@{r * 100:g}%", f"topk@{r * 100:g}%"))
        for wr in s["woft_rates"]:
            if round(wr, 6) == round(r, 6):
                qs.append((f"CCI@{r * 100:g}% beats CCI w/o ft@{r * 100:g}%", f"cci_woft@{r * 100:g}%"))
        for cr in s["cluster_rates"]:
            if round(cr, 6) == round(r, 6):
                qs.append((f"CCI@{r * 100:g}% beats MMseqs2 cluster@{r * 100:g}%", f"cluster@{r * 100:g}%"))
        for q, other in qs:
            for t, m in tm:
                c = _compare(agg, cci, other, t, m)
                if c:
                    questions.append((q, t, m, c))
    summary = {"questions": []}
    if questions:
        lines += ["", "## The paper's questions, in numbers", "",
                  "Δ = CCI − other (for ↓ metrics a negative Δ is better); SE = standard error of the "
                  "difference over training seeds; with 3 seeds, |Δ| under ~2 SE is not a "
                  "difference.", "", "| question | task | metric | answer |", "|---|---|---|---|"]
        for q, t, m, c in questions:
            lines.append(f"| {q} | {t} | {m}{' ↓' if lower_is_better(m) else ''} | {c} |")
            summary["questions"].append({"question": q, "task": t, "metric": m, "answer": c})
        wins = {}
        for q, t, m, c in questions:
            wins.setdefault(q, [0, 0])
            wins[q][0] += c.startswith("yes")
            wins[q][1] += 1
        lines += ["", "Tally (metrics where the answer is yes / metrics compared):", ""]
        lines += [f"- {q}: {w}/{n}" for q, (w, n) in wins.items()]
    lines += ["", "Plots: " + ", ".join(f"`plots/{t}.png`" for t in dict.fromkeys(t for t, _ in tm)),
              "", "Command and versions: `manifest.json`; every value: `results.csv`.", ""]
    write_text(path, "\n".join(lines))
    return summary


def _arm_info(study) -> dict:
    out = {}
    for a in expand_arms(study.cfg):
        for seed in study.cfg["seeds"]:
            m = study.out / "arms" / a["name"] / f"s{seed}" / "pretrain" / "_DONE.json"
            if m.exists():
                d = json.loads(m.read_text())
                out.setdefault(a["name"], {"n_train": d.get("n_train"), "steps": d.get("steps")})
        if a["strategy"] == "init":
            out[a["name"]] = {"n_train": 0, "steps": 0}
    return out


def plot(study, rows: list[dict], plots_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = aggregate(rows)
    all_arms = expand_arms(study.cfg)
    paths = []
    for task in dict.fromkeys(r["task"] for r in rows):
        metrics = list(dict.fromkeys(r["metric"] for r in rows if r["task"] == task))
        fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.8), squeeze=False)
        for ax, m in zip(axes[0], metrics):
            for strat in STRATEGIES:
                pts = [(a["rate"], *agg[(a["name"], task, m)][:2]) for a in all_arms
                       if a["strategy"] == strat and (a["name"], task, m) in agg]
                if not pts:
                    continue
                if strat in ("full", "init"):
                    mean, std = pts[0][1], pts[0][2]
                    ls = "-" if strat == "full" else ":"
                    ax.axhline(mean, color="k" if strat == "full" else "grey", ls=ls, lw=1,
                               label=LABELS[strat])
                    if not math.isnan(std):
                        ax.axhspan(mean - std, mean + std, color="k" if strat == "full" else "grey",
                                   alpha=0.08)
                    continue
                pts.sort()
                x, y, e = zip(*pts)
                e = [0 if math.isnan(v) else v for v in e]
                ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=LABELS[strat])
            ax.set_xscale("log")
            ax.set_xlabel("retention rate (fraction of the training corpus)")
            ax.set_ylabel(f"{m}{' (lower is better)' if lower_is_better(m) else ''}")
            ax.set_title(f"{task}: {m}")
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        p = plots_dir / f"{task.replace(':', '_').replace('/', '_')}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(p) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def write_report(study, steps) -> dict:
    rows = collect_rows(study)
    write_csv(rows, study.out / "results.csv")
    summary = write_markdown(study, rows, study.out / "results.md")
    summary["plots"] = [str(p) for p in plot(study, rows, study.out / "plots")]
    summary["rows"] = len(rows)
    return summary
