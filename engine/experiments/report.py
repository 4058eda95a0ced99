"""Outputs of a study: results.csv, results.md (power gate, per-arm means, paired verdicts), one
PNG per task (metric against retention rate, a line per strategy, ±1 SE error bars).

A result value is the mean over the probe seeds of one evaluation (one arm, one training seed).

Statistics, one definition everywhere (DESIGN step 6):

- A comparison of arm A with arm B on one task/metric is **paired by training seed**: only seeds
  that both arms have are used, Δ_s = A_s − B_s, Δ = mean Δ_s (in the metric's units, A − B),
  SE = sd(Δ_s, ddof 1) / √n_pairs. With one pair there is no SE ("n/a (1 seed)").
- Δ/SE is signed so that positive means A is better (higher is better except for losses and
  perplexities, see ``lower_is_better``). Label **better** if Δ/SE ≥ 2, **worse** if ≤ −2, else
  **tie**; never by the sign alone.
- **Power gate.** Per task/metric, Full against the random-initialised floor (``init``), and for
  the held-out MLM task (``mlm``) also Full against Random at the smallest rate present, each
  paired as above; the metric passes when every check it needs is ≥ 3 SE in Full's favour.
  Metrics that fail (or lack the arms, or have one seed) "do not resolve at this scale" and get
  no verdicts. If held-out MLM loss fails, results.md opens with *Underpowered*.
- Per-arm means (table and plot error bars) are mean ± SE with SE = sd / √n over the arm's
  seeds (ddof 1), the unpaired counterpart of the same definition; whether two arms differ is
  read from the paired verdicts, not from overlapping bars.

The statistics are small pure functions (``paired``, ``gate``, ``plan_comparisons``,
``render_markdown``) so they can be tested on synthetic rows without running a study.
"""
from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np

from bioprune.engine.experiments.config import LABELS, STRATEGIES, arm_name
from bioprune.engine.experiments.config import arms as expand_arms
from bioprune.engine.io.atomic import atomic_path, write_text

COLUMNS = ["arm", "strategy", "rate", "seed", "task", "metric", "value"]
# a metric is lower-is-better when one of its name's tokens (split at non-alphanumerics) is one
# of these: mlm loss, ppl, loss_macro, loss@GROUP, ...
LOWER_IS_BETTER = ("ppl", "perplexity", "loss", "mse", "mae", "rmse")
VERDICT_SE = 2.0           # better / worse at ≥ 2 SE
GATE_SE = 3.0              # a power-gate check passes at ≥ 3 SE
BETTER, TIE, WORSE = "better", "tie", "worse"
NA_ONE, NA_NONE = "n/a (1 seed)", "n/a (no common seeds)"
NO_RESOLVE = "does not resolve at this scale"
MLM_TASK, MLM_HEADLINE_METRIC = "mlm", "loss"
FAMILY_SAME_RATE = "Strategy vs Random at the same rate"
FAMILY_MULTIPLES = "CCI at the base rate vs Random at larger rates"
FAMILY_FULL = "Every arm vs Full"
FAMILY_OTHERS = "CCI vs the other selections, and the score definition"
# (a, b) strategy pairs compared at every rate both have: CCI against Top-I, CCI w/o ft and the
# MMseqs2 baseline (the paper's ablations), and each score-based strategy on the default score
# against the same strategy on the single-mask score (what the score definition does downstream)
OTHER_PAIRS = [("cci", "topk"), ("cci", "cci_woft"), ("cci", "cluster"), ("cci", "cci_1mask"),
               ("topk", "topk_1mask"), ("cci_dedup", "cci"), ("cci_dedup", "cluster")]


def lower_is_better(metric: str) -> bool:
    return any(t in LOWER_IS_BETTER for t in re.split(r"[^a-z0-9]+", metric.lower()))


def needs_random_check(task: str, metric: str) -> bool:
    """Whether the power gate of this task/metric also needs Full vs Random at the smallest rate
    (the held-out MLM task: every one of its metrics), or only Full vs the floor."""
    return task == MLM_TASK


# ---------------------------------------------------------------------------------------------
# statistics (pure)


class Paired(NamedTuple):
    """A − B paired by seed. ``delta`` in the metric's units; ``z`` = Δ/SE signed so that
    positive means A is better (nan without an SE, ±inf when every pair differs by the same
    non-zero amount)."""
    delta: float
    se: float
    n: int
    label: str
    z: float


def _finite(v) -> bool:
    return v is not None and math.isfinite(float(v))


def paired(a: dict, b: dict, higher_is_better: bool = True, k: float = VERDICT_SE) -> Paired:
    """Compare two arms given as {seed: value}. Only seeds present (and finite) in both count."""
    seeds = [s for s in a if s in b and _finite(a[s]) and _finite(b[s])]
    n = len(seeds)
    if n == 0:
        return Paired(math.nan, math.nan, 0, NA_NONE, math.nan)
    d = np.array([float(a[s]) - float(b[s]) for s in seeds])
    delta = float(d.mean())
    if n == 1:
        return Paired(delta, math.nan, 1, NA_ONE, math.nan)
    se = float(d.std(ddof=1) / math.sqrt(n))
    good = delta if higher_is_better else -delta
    # a difference at the level of float rounding is no difference (and 0/0 is a tie)
    scale = max(1.0, max(max(abs(float(a[s])), abs(float(b[s]))) for s in seeds))
    if abs(delta) <= 1e-9 * scale:
        z = 0.0
    elif se == 0:
        z = math.copysign(math.inf, good)
    else:
        z = good / se
    label = BETTER if z >= k else WORSE if z <= -k else TIE
    return Paired(delta, se, n, label, z)


class Gate(NamedTuple):
    passed: bool
    floor: Paired | None          # Full − floor (None: no floor arm)
    random: Paired | None         # Full − Random at the smallest rate (None: no such arm)
    need_random: bool
    reason: str                   # why it failed ("" when it passed)


def _check(p: Paired | None, what: str, k: float) -> str:
    """'' when the check passes, else why not."""
    if p is None:
        return f"no {what} arm"
    if p.n < 2:
        return f"Full vs {what}: {p.label}"
    if not p.z >= k:
        return f"Full vs {what} {_fmt_z(p.z)} SE < {k:g}"
    return ""


def gate(full: dict | None, floor: dict | None, higher_is_better: bool,
         random_small: dict | None = None, need_random: bool = False, k: float = GATE_SE,
         floor_name: str = "floor", random_name: str = "Random@smallest") -> Gate:
    """The power gate of one task/metric: Full must beat the floor (and, with ``need_random``,
    Random at the smallest rate) by ≥ ``k`` SE, paired by seed. Arms are {seed: value} or None
    when absent."""
    if not full:
        return Gate(False, None, None, need_random, "no Full arm")
    pf = paired(full, floor, higher_is_better) if floor else None
    pr = paired(full, random_small, higher_is_better) if random_small else None
    why = [_check(pf, floor_name, k)]
    if need_random:
        why.append(_check(pr, random_name, k))
    why = [w for w in why if w]
    return Gate(not why, pf, pr, need_random, "; ".join(why))


# ---------------------------------------------------------------------------------------------
# rows → tables (pure)


class Arm(NamedTuple):
    name: str
    strategy: str
    rate: float


def _strategy_order(strategy: str) -> int:
    return STRATEGIES.index(strategy) if strategy in STRATEGIES else len(STRATEGIES)


def index_rows(rows: list[dict]) -> tuple[dict, list[Arm], list[tuple[str, str]]]:
    """({(arm, task, metric): {seed: value}}, the arms in table order, (task, metric) pairs in
    order of appearance). Duplicate (arm, seed, task, metric) rows are averaged."""
    acc: dict = {}
    arms: dict[str, Arm] = {}
    tms: dict = {}
    for r in rows:
        arms.setdefault(r["arm"], Arm(r["arm"], r["strategy"], float(r["rate"])))
        tms.setdefault((r["task"], r["metric"]), None)
        acc.setdefault((r["arm"], r["task"], r["metric"]), {}).setdefault(r["seed"], []).append(
            float(r["value"]))
    values = {k: {s: float(np.mean(v)) for s, v in d.items()} for k, d in acc.items()}
    order = sorted(arms.values(), key=lambda a: (_strategy_order(a.strategy), a.strategy, a.rate))
    return values, order, list(tms)


def arm_label(arm: Arm) -> str:
    lab = LABELS.get(arm.strategy, arm.strategy)
    return lab if arm.strategy in ("full", "init") else f"{lab}@{arm.rate * 100:g}%"


def _pct(rate: float) -> str:
    return f"{rate * 100:g}%"


def smallest_random(arms: list[Arm]) -> Arm | None:
    rs = [a for a in arms if a.strategy == "random"]
    return min(rs, key=lambda a: a.rate) if rs else None


class Comparison(NamedTuple):
    family: str
    question: str
    a: str          # arm name
    b: str


def plan_comparisons(arms: list[Arm], selection: dict) -> tuple[list[Comparison], list[str]]:
    """The verdict comparisons present in ``arms`` and notes on those skipped:
    every non-random strategy against Random at the same rate; CCI at ``base_rate`` against
    Random at each of ``random_multiples`` × the base rate (Full when that reaches the whole
    corpus); CCI against Top-I / CCI w/o ft / clusters and each score-based strategy against its
    single-mask twin at the same rate (``OTHER_PAIRS``); every trained arm against Full."""
    by_name = {a.name: a for a in arms}
    out: list[Comparison] = []
    notes: list[str] = []
    for a in arms:
        if a.strategy in ("full", "init", "random"):
            continue
        rnd = arm_name("random", a.rate)
        if rnd in by_name:
            out.append(Comparison(FAMILY_SAME_RATE,
                                   f"{arm_label(a)} beats {arm_label(by_name[rnd])}", a.name, rnd))
        else:
            notes.append(f"{FAMILY_SAME_RATE}: {arm_label(a)} skipped, no `{rnd}` arm")
    base = selection.get("base_rate")
    mults = list(selection.get("random_multiples") or [])
    if base is not None and mults:
        cci = arm_name("cci", base)
        if cci not in by_name:
            notes.append(f"{FAMILY_MULTIPLES}: no `{cci}` arm (base rate {_pct(base)})")
        else:
            for m in mults:
                rr = round(base * m, 6)
                target = "full" if rr >= 1 else arm_name("random", rr)
                where = "Full" if rr >= 1 else _pct(rr)
                q = f"{arm_label(by_name[cci])} reaches Random at {m:g}× ({where})"
                if target in by_name:
                    out.append(Comparison(FAMILY_MULTIPLES, q, cci, target))
                else:
                    notes.append(f"{FAMILY_MULTIPLES}: {q} skipped, no `{target}` arm")
    for sa, sb in OTHER_PAIRS:
        for a in arms:
            other = arm_name(sb, a.rate)
            if a.strategy == sa and other in by_name:
                out.append(Comparison(FAMILY_OTHERS,
                                      f"{arm_label(a)} beats {arm_label(by_name[other])}",
                                      a.name, other))
    if "full" in by_name:
        for a in arms:
            if a.strategy not in ("full", "init"):
                out.append(Comparison(FAMILY_FULL, f"{arm_label(a)} reaches Full", a.name, "full"))
    elif arms:
        notes.append(f"{FAMILY_FULL}: no `full` arm")
    return out, notes


def mean_se(values) -> tuple[float, float, int]:
    """(mean, SE = sd/√n with ddof 1 (nan for one value), n) of finite values."""
    a = np.asarray([v for v in values if _finite(v)], dtype=float)
    if len(a) == 0:
        return math.nan, math.nan, 0
    se = float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else math.nan
    return float(a.mean()), se, len(a)


def aggregate(rows: list[dict]) -> dict:
    """{(arm, task, metric): (mean, SE, n)} over training seeds (SE = sd/√n, ddof 1)."""
    values, _, _ = index_rows(rows)
    return {k: mean_se(d.values()) for k, d in values.items()}


# ---------------------------------------------------------------------------------------------
# formatting


def _decimals(se: float, fallback: float) -> int:
    """Decimals that show two significant digits of the SE (or four of ``fallback``)."""
    use_se = _finite(se) and se > 0
    ref, sig = (se, 2) if use_se else (abs(fallback), 4)
    if not _finite(ref) or ref == 0:
        return 4
    return int(min(8, max(0, sig - 1 - math.floor(math.log10(ref)))))


def fmt_delta(p: Paired) -> str:
    if p.n == 0:
        return "—"
    d = _decimals(p.se, p.delta)
    if p.n < 2:
        return f"{p.delta:+.{d}f}"
    return f"{p.delta:+.{d}f} ± {p.se:.{d}f}"


def _fmt_z(z: float) -> str:
    if not _finite(z):
        return "—" if math.isnan(z) else ("+∞" if z > 0 else "−∞")
    return f"{z:+.1f}"


def _fmt_mean(mean: float, se: float) -> str:
    if math.isnan(mean):
        return "—"
    d = _decimals(se, mean)
    d = max(d, 3)
    return f"{mean:.{d}f}" if not _finite(se) else f"{mean:.{d}f} ± {se:.{d}f}"


def _arrow(metric: str) -> str:
    return "↓" if lower_is_better(metric) else "↑"


def _tm(task: str, metric: str) -> str:
    return f"{task} {metric}"


def _num(x: float):
    return x if _finite(x) else None


def _paired_json(p: Paired | None):
    if p is None:
        return None
    return {"delta": _num(p.delta), "se": _num(p.se), "n": p.n, "label": p.label,
            "z": None if math.isnan(p.z) else p.z}


# ---------------------------------------------------------------------------------------------
# results.md


def render_markdown(rows: list[dict], selection: dict, name: str = "study",
                    setup: str | None = None, arm_info: dict | None = None,
                    plots: list[str] | None = None) -> tuple[str, dict]:
    """results.md from result rows (the results.csv columns) and the study's ``[selection]``
    config (``base_rate``, ``random_multiples``). ``setup``: a paragraph about the run;
    ``arm_info``: {arm: {"n_train", "steps"}}; ``plots``: file names to list. Returns the text
    and a summary (gate, verdicts, tally)."""
    values, arms, tms = index_rows(rows)
    by_name = {a.name: a for a in arms}
    small = smallest_random(arms)
    floor_name = arm_label(by_name["init"]) if "init" in by_name else "floor"
    small_name = arm_label(small) if small else "Random@smallest"

    # 1. the power gate
    gates: dict[tuple[str, str], Gate] = {}
    for t, m in tms:
        g = values.get
        gates[(t, m)] = gate(g(("full", t, m)), g(("init", t, m)), not lower_is_better(m),
                             g((small.name, t, m)) if small else None,
                             need_random=needs_random_check(t, m),
                             floor_name="floor", random_name=small_name)
    passed = [tm for tm in tms if gates[tm].passed]
    failed = [tm for tm in tms if not gates[tm].passed]
    mlm = (MLM_TASK, MLM_HEADLINE_METRIC)
    names = ", ".join(_tm(*tm) for tm in passed) or "none"
    if mlm not in gates:
        underpowered = True
        headline = (f"**Underpowered**: no held-out MLM loss "
                    f"(`{MLM_TASK}` `{MLM_HEADLINE_METRIC}`) "
                    f"in the results, so the study's power cannot be checked. Metrics that pass "
                    f"their own gate (verdicts below): {names}.")
    elif not gates[mlm].passed:
        underpowered = True
        headline = (f"**Underpowered**: held-out MLM loss {NO_RESOLVE} ({gates[mlm].reason}; "
                    f"the gate needs ≥ {GATE_SE:g} SE over ≥ 2 paired seeds). Metrics that pass "
                    f"their own gate "
                    f"(verdicts below): {names}.")
    else:
        underpowered = False
        headline = (f"**Powered on held-out MLM loss.** Metrics that pass the gate (verdicts "
                    f"below): {names}."
                    + (f" Not read ({NO_RESOLVE}): {', '.join(_tm(*tm) for tm in failed)}."
                       if failed else ""))

    lines = [f"# Pruning study: {name}", "", headline, "", "## Power gate", "",
             f"Before any verdict on a metric, Full must beat the random-initialised floor "
             f"(`init`) by ≥ {GATE_SE:g} SE; on the held-out MLM task (`{MLM_TASK}`) it must also "
             f"beat Random at the smallest rate present ({small_name}) by ≥ {GATE_SE:g} SE "
             f"(shown for information on the other tasks). Every comparison is paired by "
             f"training seed: Δ = mean over common seeds of (first − second) in the metric's "
             f"units, SE = sd(Δ per seed) / √pairs; Δ/SE is signed so that positive means the "
             f"first arm is better (↑: higher is better, ↓: lower is better). A metric that fails "
             f"{NO_RESOLVE} and gets no verdicts.", "",
             f"| task | metric | good | Full − {floor_name} | Δ/SE | Full − {small_name} | Δ/SE "
             f"| gate |", "|---|---|---|---|---|---|---|---|"]
    for t, m in tms:
        gt = gates[(t, m)]
        cells = []
        for p, used in ((gt.floor, True), (gt.random, gt.need_random)):
            if p is None:
                cells += ["—", "—"]
                continue
            dz = [fmt_delta(p), _fmt_z(p.z) if p.n >= 2 else p.label]
            cells += dz if used else [f"({c})" for c in dz]
        verdict = "passes" if gt.passed else f"{NO_RESOLVE} ({gt.reason})"
        lines.append(f"| {t} | {m} | {_arrow(m)} | " + " | ".join(cells) + f" | {verdict} |")
    lines += ["", "Values in parentheses are not part of that metric's gate."]

    # 2. setup and per-arm means
    lines += ["", "## Per-arm results", ""]
    if setup:
        lines += [setup, ""]
    seeds = sorted({r["seed"] for r in rows}, key=str)
    lines += [f"Mean ± SE over training seeds ({', '.join(map(str, seeds))}) of the per-"
              f"evaluation value; SE = sd/√n (ddof 1), the same SE as the plots' error bars. "
              f"Two arms' SEs do not tell whether they differ: the paired verdicts below do. "
              f"↓ marks metrics where lower is better.", ""]
    info_cols = arm_info is not None
    head = "| arm | " + ("n train | steps | " if info_cols else "") + " | ".join(
        f"{t} {m}{' ↓' if lower_is_better(m) else ''}" for t, m in tms) + " |"
    lines += [head, "|" + "---|" * (1 + 2 * info_cols + len(tms))]
    for a in arms:
        cells = [_fmt_mean(*mean_se(values[(a.name, t, m)].values())[:2])
                 if (a.name, t, m) in values else "—" for t, m in tms]
        extra = ""
        if info_cols:
            inf = arm_info.get(a.name, {})
            extra = f"{inf.get('n_train', '—')} | {inf.get('steps', '—')} | "
        lines.append(f"| {a.name} | {extra}" + " | ".join(cells) + " |")

    # 3. verdicts, gated metrics only
    comps, notes = plan_comparisons(arms, selection)
    summary: dict = {"headline": headline, "underpowered": underpowered,
                     "gate": [{"task": t, "metric": m, "passed": gates[(t, m)].passed,
                               "reason": gates[(t, m)].reason,
                               "full_vs_floor": _paired_json(gates[(t, m)].floor),
                               "full_vs_random_smallest": _paired_json(gates[(t, m)].random),
                               "random_check_required": gates[(t, m)].need_random}
                              for t, m in tms],
                     "questions": [], "tally": {}, "notes": notes}
    lines += ["", "## Verdicts", "",
              f"Paired by seed as in the power gate; Δ = first − second arm in the metric's units. "
              f"**better** if Δ/SE ≥ {VERDICT_SE:g} in the metric's good direction, **worse** if "
              f"≤ −{VERDICT_SE:g}, else tie; never by the sign alone.", ""]
    if failed:
        lines += [f"Not read, {NO_RESOLVE} (see Power gate): "
                  + ", ".join(_tm(*tm) for tm in failed) + ".", ""]
    lines += [f"- Note: {n}" for n in notes] + ([""] if notes else [])
    families = list(dict.fromkeys(c.family for c in comps))
    tally: dict = {}
    for fam in families:
        fc = [c for c in comps if c.family == fam]
        lines += [f"### {fam}", ""]
        if not passed:
            lines += ["No metric resolves at this scale, so no verdicts. Comparisons this family "
                      "would read:", ""] + [f"- {c.question}" for c in fc] + [""]
            continue
        lines += ["| comparison | task | metric | Δ ± SE | Δ/SE | pairs | verdict |",
                  "|---|---|---|---|---|---|---|"]
        counts = {BETTER: 0, TIE: 0, WORSE: 0, "n/a": 0}
        for c in fc:
            for t, m in passed:
                va, vb = values.get((c.a, t, m)), values.get((c.b, t, m))
                if va is None or vb is None:
                    p = Paired(math.nan, math.nan, 0, "n/a (missing)", math.nan)
                else:
                    p = paired(va, vb, not lower_is_better(m))
                counts[p.label if p.label in counts else "n/a"] += 1
                lab = f"**{p.label}**" if p.label in (BETTER, WORSE) else p.label
                lines.append(f"| {c.question} | {t} | {m} {_arrow(m)} | {fmt_delta(p)} | "
                             f"{_fmt_z(p.z)} | {p.n} | {lab} |")
                summary["questions"].append({"family": fam, "question": c.question, "a": c.a,
                                             "b": c.b, "task": t, "metric": m,
                                             **_paired_json(p)})
        tally[fam] = counts
        lines.append("")
    summary["tally"] = tally
    if tally:
        lines += ["### Tally", "", "Comparisons × gated metrics, per family.", "",
                  "| family | better | tie | worse | n/a |", "|---|---|---|---|---|"]
        lines += [f"| {f} | {c[BETTER]} | {c[TIE]} | {c[WORSE]} | {c['n/a']} |"
                  for f, c in tally.items()]
        lines.append("")
    if plots:
        lines += ["Plots (error bars ±1 SE over seeds): "
                  + ", ".join(f"`{p}`" for p in plots), ""]
    lines += ["Command and versions: `manifest.json`; every value: `results.csv`.", ""]
    return "\n".join(lines), summary


def read_rows(path) -> list[dict]:
    """results.csv back into rows (rate and value as float, seed as int where it is one)."""
    out = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            seed = r["seed"]
            try:
                seed = int(seed)
            except ValueError:
                pass
            out.append({**r, "rate": float(r["rate"]), "seed": seed, "value": float(r["value"])})
    return out


# ---------------------------------------------------------------------------------------------
# study I/O


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


def _setup_text(study) -> str:
    cfg = study.cfg
    marker = study.out / "data" / "_DONE.json"
    split = json.loads(marker.read_text()) if marker.exists() else {}
    part = ("validation part of the training corpus" if cfg["corpus"].get("calibrate")
            else "held-out part")
    return (f"Model {cfg['model']} {cfg['model_size']}; training corpus {study.n_train} sequences "
            f"({split.get('rule', '')}); {part} for `mlm`: {split.get('n_heldout')} sequences in "
            f"data/heldout/, every arm scored on all of them with the same masks; seeds "
            f"{cfg['seeds']} (selection seed = training seed); training "
            + (f"compute-matched, {cfg['training']['steps']} optimizer steps per arm"
               if cfg["training"]["mode"] == "steps" else
               f"{cfg['training']['epochs']} epochs on each training set")
            + f", micro-batch {cfg['training']['micro_batch_size']} × {study.ranks} rank(s).")


def _plot_names(rows: list[dict]) -> list[str]:
    return [f"plots/{_plot_file(t)}" for t in dict.fromkeys(r["task"] for r in rows)]


def _plot_file(task: str) -> str:
    return f"{task.replace(':', '_').replace('/', '_')}.png"


def write_markdown(study, rows: list[dict], path: Path) -> dict:
    text, summary = render_markdown(rows, study.cfg["selection"], name=study.cfg["name"],
                                    setup=_setup_text(study), arm_info=_arm_info(study),
                                    plots=_plot_names(rows))
    write_text(path, text)
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


def plot_rows(rows: list[dict], plots_dir: Path) -> list[Path]:
    """One PNG per task: each metric against retention rate (log), a line per strategy with ±1
    SE error bars (SE = sd/√n over seeds, as in results.md), strategies nudged apart on the x
    axis so that arms at the same rate stay readable; Full as a horizontal line with its ±1 SE
    band; the random-init floor, usually far above every trained arm, written in the panel
    instead of drawn (drawn, it squeezed every arm into one line). Four panels per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values, arms, _ = index_rows(rows)
    strategies = list(dict.fromkeys(a.strategy for a in arms))
    trained = [s for s in strategies if s not in ("full", "init")]
    paths = []
    for task in dict.fromkeys(r["task"] for r in rows):
        metrics = list(dict.fromkeys(r["metric"] for r in rows if r["task"] == task))
        ncol = min(4, len(metrics))
        nrow = -(-len(metrics) // ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(4.6 * ncol, 3.8 * nrow), squeeze=False)
        for ax in axes.ravel()[len(metrics):]:
            ax.axis("off")
        for ax, m in zip(axes.ravel(), metrics):
            for strat in strategies:
                pts = [(a.rate, *mean_se(values[(a.name, task, m)].values())[:2]) for a in arms
                       if a.strategy == strat and (a.name, task, m) in values]
                if not pts:
                    continue
                label = LABELS.get(strat, strat)
                mean, se = pts[0][1], pts[0][2]
                if strat == "init":
                    ax.text(0.02, 0.02, f"{label}: {mean:.4g}" + (f" ± {se:.2g}" if _finite(se)
                                                                  else ""),
                            transform=ax.transAxes, fontsize=7, color="0.35")
                    continue
                if strat == "full":
                    ax.axhline(mean, color="k", lw=1, label=label)
                    if _finite(se):
                        ax.axhspan(mean - se, mean + se, color="k", alpha=0.08)
                    continue
                pts.sort()
                k = trained.index(strat)
                nudge = 1.0 + 0.06 * (k - (len(trained) - 1) / 2)
                x, y, e = zip(*pts)
                x = [v * nudge for v in x]
                e = [v if _finite(v) else 0 for v in e]
                ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=label)
            ax.set_xscale("log")
            rates = sorted({a.rate for a in arms if a.strategy not in ("full", "init")})
            if rates:   # ticks at the arms' rates, as percentages
                ax.set_xticks(rates, [f"{r * 100:g}%" for r in rates])
                ax.minorticks_off()
                ax.set_xlim(rates[0] / 1.35, rates[-1] * 1.35)
            ax.set_xlabel("retention rate (share of the training corpus)")
            ax.set_ylabel(f"{m}{' (lower is better)' if lower_is_better(m) else ''}")
            ax.set_title(f"{task}: {m} (±1 SE over seeds)", fontsize=9)
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        p = plots_dir / _plot_file(task)
        p.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(p) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def plot(study, rows: list[dict], plots_dir: Path) -> list[Path]:
    return plot_rows(rows, plots_dir)


def write_report(study, steps) -> dict:
    rows = collect_rows(study)
    write_csv(rows, study.out / "results.csv")
    summary = write_markdown(study, rows, study.out / "results.md")
    from bioprune.engine.experiments.composition import composition, markdown, write_composition

    comp = composition(study)
    write_composition(comp, study.out / "composition.csv")
    if comp:
        write_text(study.out / "results.md",
                   (study.out / "results.md").read_text().rstrip("\n") + "\n\n" + markdown(comp))
    summary["plots"] = [str(p) for p in plot(study, rows, study.out / "plots")]
    summary["rows"] = len(rows)
    return summary
