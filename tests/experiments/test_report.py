"""The study report's statistics on synthetic results (no training): paired-by-seed verdicts at
2 SE, the power gate at 3 SE, and results.md built from rows / results.csv / eval.json files."""
from __future__ import annotations

import copy
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from bioprune.engine.experiments import report as R
from bioprune.engine.experiments.config import DEFAULTS

SEEDS = [0, 1, 2, 3]
# a per-seed effect shared by every arm: pairing removes it, an unpaired SE would not
SEED_EFFECT = np.array([0.0, 0.02, -0.02, 0.01])
JITTER = np.array([0.001, -0.001, 0.0005, -0.0005])


def _arm(name: str) -> tuple[str, float]:
    if name in ("full", "init"):
        return name, 1.0 if name == "full" else 0.0
    strategy, pct = name.split("@")
    return strategy, float(pct.rstrip("%")) / 100


def make_rows(spec: dict) -> list[dict]:
    """spec: {arm: {(task, metric): values per seed (SEEDS order)}}"""
    rows = []
    for arm, metrics in spec.items():
        strategy, rate = _arm(arm)
        for (task, metric), vals in metrics.items():
            for seed, v in zip(SEEDS, vals):
                rows.append({"arm": arm, "strategy": strategy, "rate": rate, "seed": seed,
                             "task": task, "metric": metric, "value": float(v)})
    return rows


def _loss(level, jitter=1.0):
    return level + SEED_EFFECT + jitter * JITTER


def _acc(level, jitter=1.0):
    return level + SEED_EFFECT / 4 + jitter * JITTER


ACC, LOSS = ("rna-type", "acc"), ("mlm", "loss")
SELECTION = {"base_rate": 0.05, "random_multiples": [2, 10]}


def study_spec(mlm_resolves: bool) -> dict:
    """Full clearly beats the floor on mlm loss; it beats Random@5% by far (mlm_resolves) or by
    nothing. rna-type acc: Full = floor (never resolves). CCI@5% is clearly better than
    Random@5% on mlm loss, Top-I@5% clearly worse."""
    gap = 0.10 if mlm_resolves else 0.0
    return {
        "full": {ACC: _acc(0.48), LOSS: _loss(1.50)},
        "init": {ACC: _acc(0.48, -1), LOSS: _loss(3.20, 0)},
        "random@5%": {ACC: _acc(0.47), LOSS: _loss(1.50 + gap, -1)},
        "random@10%": {ACC: _acc(0.47), LOSS: _loss(1.50 + gap / 2, 0.5)},
        "random@50%": {ACC: _acc(0.48), LOSS: _loss(1.50, -0.5)},
        "cci@5%": {ACC: _acc(0.47, -1), LOSS: _loss(1.50 + gap / 2, 0.3)},
        "topk@5%": {ACC: _acc(0.47, 0.5), LOSS: _loss(1.50 + gap + 0.05, 0.2)},
    }


# --- paired -----------------------------------------------------------------------------------


def test_paired_clear_improvement_is_better():
    a = dict(zip(SEEDS, _acc(0.50)))
    b = dict(zip(SEEDS, _acc(0.48, -1)))
    p = R.paired(a, b, higher_is_better=True)
    d = np.array([a[s] - b[s] for s in SEEDS])
    assert p.n == 4 and p.label == R.BETTER
    assert p.delta == pytest.approx(d.mean())
    assert p.se == pytest.approx(d.std(ddof=1) / math.sqrt(4))
    assert p.z == pytest.approx(d.mean() / p.se) and p.z > 2


def test_paired_zero_difference_is_a_tie_never_better():
    a = dict(zip(SEEDS, _acc(0.47)))
    assert R.paired(a, dict(a), True) == (0.0, 0.0, 4, R.TIE, 0.0)
    # a difference of about 0.0 SE (the old report said "yes" to these)
    b = {s: v - d for (s, v), d in zip(a.items(), [0.01, -0.01, 0.0101, -0.01])}
    p = R.paired(a, b, True)
    assert p.delta > 0 and abs(p.z) < 0.1 and p.label == R.TIE
    # just under 2 SE is still a tie; at 2 SE it is better
    d = np.array([1.0, 2.0, 3.0])
    se = d.std(ddof=1) / math.sqrt(3)
    for shift, want in ((2 * se - d.mean() - 1e-6, R.TIE), (2 * se - d.mean() + 1e-6, R.BETTER)):
        a3 = {s: float(d[s] + shift) for s in range(3)}
        assert R.paired(a3, {s: 0.0 for s in range(3)}, True).label == want


def test_paired_clear_loss_is_worse():
    a = dict(zip(SEEDS, _acc(0.45)))
    b = dict(zip(SEEDS, _acc(0.48, -1)))
    p = R.paired(a, b, True)
    assert p.label == R.WORSE and p.delta < 0 and p.z < -2


def test_paired_uses_only_common_seeds():
    a = {0: 100.0, 1: 0.51, 2: 0.53, 3: 0.52}        # seed 0 only in a: an outlier
    b = {1: 0.50, 2: 0.52, 3: 0.51, 4: -100.0}        # seed 4 only in b
    p = R.paired(a, b, True)
    assert p.n == 3 and p.delta == pytest.approx(0.01)
    assert p.se == pytest.approx(0.0, abs=1e-12) and p.label == R.BETTER
    one = R.paired({0: 1.0, 1: 2.0}, {1: 1.5, 7: 0.0}, True)
    assert one.n == 1 and one.label == R.NA_ONE == "n/a (1 seed)" and math.isnan(one.se)
    none = R.paired({0: 1.0}, {1: 1.0}, True)
    assert none.n == 0 and none.label.startswith("n/a")
    nan = R.paired({0: 1.0, 1: float("nan"), 2: 1.0}, {0: 0.0, 1: 0.0, 2: 0.0}, True)
    assert nan.n == 2


def test_lower_is_better_direction_for_loss():
    assert all(R.lower_is_better(m) for m in ("loss", "ppl", "loss_macro", "loss@rRNA",
                                              "loss@rnacentral_sample#2"))
    assert not any(R.lower_is_better(m) for m in ("acc", "macro_f1", "f1", "mcc", "spearman",
                                                  "pearson", "precision", "recall"))
    lower = dict(zip(SEEDS, _loss(1.40)))
    higher = dict(zip(SEEDS, _loss(1.50, -1)))
    p = R.paired(lower, higher, higher_is_better=False)
    assert p.delta < 0 and p.z > 2 and p.label == R.BETTER
    assert R.paired(lower, higher, higher_is_better=True).label == R.WORSE
    assert R.paired(higher, lower, higher_is_better=False).label == R.WORSE


# --- gate -------------------------------------------------------------------------------------


def test_gate_fails_under_3_se_and_passes_when_large():
    full = dict(zip(SEEDS, _loss(1.50)))
    floor = dict(zip(SEEDS, _loss(3.20, 0)))
    rnd_close = dict(zip(SEEDS, _loss(1.5005, -1)))       # ~0.5 SE from Full
    rnd_far = dict(zip(SEEDS, _loss(1.60, -1)))
    g = R.gate(full, floor, False, rnd_close, need_random=True)
    assert not g.passed and g.floor.z > 3 and g.random.z < 3 and "< 3" in g.reason
    assert R.gate(full, floor, False, rnd_close, need_random=False).passed   # floor only
    assert R.gate(full, floor, False, rnd_far, need_random=True).passed
    # Full worse than the floor by many SE fails too (the gate is directional)
    assert not R.gate(floor, full, False).passed
    # missing arms / one seed
    assert not R.gate(full, None, False).passed and "no floor" in R.gate(full, None, False).reason
    assert not R.gate(full, floor, False, None, need_random=True).passed
    g1 = R.gate({0: 1.0}, {0: 3.0}, False)
    assert not g1.passed and "1 seed" in g1.reason
    # 3 SE exactly passes, just under fails
    d = np.array([1.0, 2.0, 3.0])
    se = d.std(ddof=1) / math.sqrt(3)
    for shift, want in ((3 * se - 2 + 1e-6, True), (3 * se - 2 - 1e-6, False)):
        assert R.gate({s: float(d[s] + shift) for s in range(3)}, {s: 0.0 for s in range(3)},
                      True).passed is want


# --- comparisons ------------------------------------------------------------------------------


def test_plan_comparisons_multiples_full_and_missing():
    _, arms, _ = R.index_rows(make_rows(study_spec(True)))
    comps, notes = R.plan_comparisons(arms, SELECTION)
    qs = {c.question: (c.a, c.b) for c in comps}
    assert qs["CCI@5% beats Random@5%"] == ("cci@5%", "random@5%")
    assert qs["Top-I@5% beats Random@5%"] == ("topk@5%", "random@5%")
    assert qs["CCI@5% reaches Random at 2× (10%)"] == ("cci@5%", "random@10%")
    assert qs["CCI@5% reaches Random at 10× (50%)"] == ("cci@5%", "random@50%")
    assert qs["Random@50% reaches Full"] == ("random@50%", "full")
    assert not any(c.a == "init" or c.b == "init" for c in comps)
    # 10× a 10% base is the whole corpus: Full; a missing multiple is skipped with a note
    comps, notes = R.plan_comparisons(arms, {"base_rate": 0.05, "random_multiples": [2, 4, 20]})
    qs = {c.question: (c.a, c.b) for c in comps}
    assert qs["CCI@5% reaches Random at 20× (Full)"] == ("cci@5%", "full")
    assert not any("4×" in q for q in qs) and any("4×" in n and "random@20%" in n for n in notes)
    _, notes = R.plan_comparisons(arms, {"base_rate": 0.2, "random_multiples": [2]})
    assert any("cci@20%" in n for n in notes)


# --- results.md -------------------------------------------------------------------------------


def _verdict_rows(md: str) -> list[list[str]]:
    body = md.split("## Verdicts", 1)[1]
    return [[c.strip() for c in line.strip("|").split("|")] for line in body.splitlines()
            if line.startswith("| ") and (" beats " in line or " reaches " in line)]


def test_markdown_underpowered_gives_no_verdicts():
    md, summary = R.render_markdown(make_rows(study_spec(False)), SELECTION, name="synthetic")
    lines = md.splitlines()
    assert lines[0] == "# Pruning study: synthetic"
    assert lines[2].startswith("**Underpowered**") and "Random@5%" in lines[2]
    assert summary["underpowered"] is True
    # the gate comes first, before any verdict
    assert md.index("## Power gate") < md.index("## Per-arm results") < md.index("## Verdicts")
    gate_rows = {tuple(r[:2]): r for r in
                 ([c.strip() for c in line.strip("|").split("|")] for line in lines
                  if line.startswith("| mlm |") or line.startswith("| rna-type |"))}
    assert gate_rows[LOSS][-1].startswith(R.NO_RESOLVE)
    assert gate_rows[ACC][-1].startswith(R.NO_RESOLVE)
    assert _verdict_rows(md) == [] and summary["questions"] == []
    assert "No metric resolves at this scale" in md
    assert "CCI@5% beats Random@5%" in md            # the questions are still named
    families = md.split("### ", 1)[1]
    for word in ("better", "worse", "tie"):
        assert word not in families


def test_markdown_powered_verdicts_only_on_gated_metrics():
    md, summary = R.render_markdown(make_rows(study_spec(True)), SELECTION, name="synthetic")
    head = md.splitlines()[2]
    assert head.startswith("**Powered on held-out MLM loss.**") and "mlm loss" in head
    assert "rna-type acc" in head and R.NO_RESOLVE in head           # named as not read
    assert not summary["underpowered"]
    gate = {(g["task"], g["metric"]): g for g in summary["gate"]}
    assert gate[LOSS]["passed"] and gate[LOSS]["random_check_required"]
    assert not gate[ACC]["passed"] and not gate[ACC]["random_check_required"]
    rows = _verdict_rows(md)
    assert rows and all(r[1] == "mlm" and r[2] == "loss ↓" for r in rows)
    by_q = {r[0]: r for r in rows}
    assert by_q["CCI@5% beats Random@5%"][-1] == "**better**"
    assert by_q["Top-I@5% beats Random@5%"][-1] == "**worse**"
    assert by_q["CCI@5% reaches Random at 10× (50%)"][-1] == "**worse**"
    assert by_q["Random@50% reaches Full"][-1] == "tie"
    assert by_q["CCI@5% beats Random@5%"][3].startswith("-0.05")     # Δ in loss units, A − B
    assert by_q["CCI@5% beats Random@5%"][5] == "4"
    t = summary["tally"]
    assert t[R.FAMILY_SAME_RATE] == {"better": 1, "tie": 0, "worse": 1, "n/a": 0}
    n_full = sum(1 for r in rows if r[0].endswith("reaches Full"))
    assert sum(t[R.FAMILY_FULL].values()) == n_full == 5
    assert "| Strategy vs Random at the same rate | 1 | 0 | 1 | 0 |" in md


def test_markdown_one_seed_arm_is_na_not_a_verdict():
    spec = study_spec(True)
    rows = [r for r in make_rows(spec) if not (r["arm"] == "cci@5%" and r["seed"] != 2)]
    md, summary = R.render_markdown(rows, SELECTION)
    by_q = {r[0]: r for r in _verdict_rows(md)}
    assert by_q["CCI@5% beats Random@5%"][-1] == "n/a (1 seed)"
    assert summary["tally"][R.FAMILY_SAME_RATE]["n/a"] == 1


def test_aggregate_se_matches_paired_definition():
    rows = make_rows(study_spec(True))
    agg = R.aggregate(rows)
    vals = _loss(1.50)
    mean, se, n = agg[("full", *LOSS)]
    assert n == 4 and mean == pytest.approx(vals.mean())
    assert se == pytest.approx(vals.std(ddof=1) / 2)


def test_results_md_end_to_end_from_eval_json(tmp_path):
    """write_report on a study directory holding only eval.json files (nothing trained):
    results.csv keeps its columns, results.md is rebuilt from it with the gate first, plots
    appear."""
    cfg = copy.deepcopy(DEFAULTS)
    cfg.update(name="synthetic", seeds=SEEDS)
    cfg["selection"].update(rates=[0.05], base_rate=0.05, random_multiples=[2, 10],
                            woft_rates=[], cluster_rates=[])
    spec = study_spec(True)
    for arm, metrics in spec.items():
        for i, seed in enumerate(SEEDS):
            tasks: dict = {}
            for (task, metric), vals in metrics.items():
                tasks.setdefault(task, {"metrics": {}})["metrics"][metric] = {
                    "mean": float(vals[i]), "values": [float(vals[i])]}
            d = tmp_path / "arms" / arm / f"s{seed}" / "eval"
            d.mkdir(parents=True)
            (d / "eval.json").write_text(json.dumps({"tasks": tasks}))
    study = SimpleNamespace(cfg=cfg, out=tmp_path, n_train=1000, ranks=1)
    summary = R.write_report(study, [])
    csv_text = (tmp_path / "results.csv").read_text().splitlines()
    assert csv_text[0] == ",".join(R.COLUMNS) == "arm,strategy,rate,seed,task,metric,value"
    assert summary["rows"] == len(csv_text) - 1 == len(spec) * len(SEEDS) * 2
    md = (tmp_path / "results.md").read_text()
    assert md.splitlines()[2].startswith("**Powered on held-out MLM loss.**")
    assert md.index("## Power gate") < md.index("## Verdicts")
    assert "training corpus 1000 sequences" in md
    assert "| init | 0 | 0 |" in md
    # results.csv alone gives the same results.md body (rounded to 6 digits: same verdicts)
    md2, s2 = R.render_markdown(R.read_rows(tmp_path / "results.csv"), cfg["selection"])
    assert _verdict_rows(md2) and [r[-1] for r in _verdict_rows(md2)] == \
        [r[-1] for r in _verdict_rows(md)]
    for task in ("rna-type", "mlm"):
        assert (tmp_path / "plots" / f"{task}.png").stat().st_size > 1000


def test_plan_comparisons_cci_against_other_selections_and_score_definition():
    arms = [R.Arm(n, s, r) for n, s, r in [
        ("full", "full", 1.0), ("random@1%", "random", 0.01), ("cci@1%", "cci", 0.01),
        ("topk@1%", "topk", 0.01), ("cci_1mask@1%", "cci_1mask", 0.01),
        ("topk_1mask@1%", "topk_1mask", 0.01), ("cluster@1%", "cluster", 0.01),
        ("cci@2%", "cci", 0.02)]]
    comps, _ = R.plan_comparisons(arms, {"base_rate": 0.01, "random_multiples": []})
    others = {(c.a, c.b) for c in comps if c.family == R.FAMILY_OTHERS}
    assert others == {("cci@1%", "topk@1%"), ("cci@1%", "cluster@1%"),
                      ("cci@1%", "cci_1mask@1%"), ("topk@1%", "topk_1mask@1%")}
