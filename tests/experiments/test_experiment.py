"""The pruning study end to end (configs/experiments/rna-quick.toml, the real launchers), the
report's columns, and resume: a rerun skips every finished step."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from bioprune.engine.experiments.config import arms, load_config, random_rates
from pipeline_utils import ROOT

QUICK = ROOT / "configs" / "experiments" / "rna-quick.toml"

def _run(out: Path, extra=(), capsys=None) -> str:
    from bioprune.launch.experiment import main

    args = ["--config", str(QUICK), "--out", str(out), *extra]
    assert main(args) == 0
    return capsys.readouterr().out if capsys else ""


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "quick"
    _run(out)
    return out


@pytest.mark.slow
@pytest.mark.subprocess
def test_quick_study_every_arm_and_outputs(quick):
    cfg = load_config(QUICK)
    with open(quick / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["arm", "strategy", "rate", "seed", "task", "metric", "value"]
    want = {a["name"] for a in arms(cfg)}
    assert {r["arm"] for r in rows} == want
    assert {"full", "random", "topk", "cci", "cci_woft", "topk_1mask", "cci_1mask", "cluster",
            "init"} == {r["strategy"] for r in rows}
    # the same held-out sequences and masks for every arm, a loss per source and their mean
    metrics = {r["metric"] for r in rows if r["task"] == "mlm"}
    assert {"loss", "ppl", "loss_macro", "loss@rnacentral_sample"} <= metrics
    evals = [json.loads(p.read_text())["tasks"]["mlm"]
             for p in quick.glob("arms/*/s0/eval/eval.json")]
    assert len({(e["n_test"], tuple(e["mask_seeds"])) for e in evals}) == 1
    split_info = json.loads((quick / "data" / "_DONE.json").read_text())
    assert evals[0]["n_test"] == split_info["n_heldout"]
    # the single-mask score ran as its own scoring run
    assert (quick / "score_1mask" / "scores" / "_SUCCESS").exists()
    # model-free composition: the corpus row first, shares summing to 1 for every arm
    with open(quick / "composition.csv") as f:
        comp = list(csv.DictReader(f))
    assert comp[0]["arm"] == "corpus" and len(comp) > 5
    for r in comp:
        assert sum(float(v) for k, v in r.items() if k.startswith("share@")) == pytest.approx(1)
    tasks = cfg["evaluation"]["tasks"] + cfg["evaluation"]["gate_only_tasks"]
    assert {r["task"] for r in rows} == set(tasks)
    # a gate-only probe runs on Full and the floor alone
    gate_only = cfg["evaluation"]["gate_only_tasks"]
    assert {r["arm"] for r in rows if r["task"] in gate_only} == {"full", "init"}
    md = (quick / "results.md").read_text()
    assert md.index("## Power gate") < md.index("## Verdicts")
    assert "Composition of each coreset" in md
    assert "CCI@10% beats Random@10%" in md and "Random at 2×" in md
    for t in tasks:
        assert (quick / "plots" / f"{t}.png").stat().st_size > 1000
    man = json.loads((quick / "manifest.json").read_text())
    assert man["commit"]["hash"] and man["versions"]["torch"] and man["commands"]
    assert {"reference", "score", "pretrain", "evaluate", "select"} <= set(man["wall_s_per_phase"])
    # compute-matched: every arm ran the same number of optimizer steps, recorded
    steps = {json.loads(p.read_text())["steps"]
             for p in quick.glob("arms/*/s*/pretrain/_DONE.json")}
    assert steps == {cfg["training"]["steps"]}
    # the held-out part is disjoint from the training corpus and never scored
    split = json.loads((quick / "data" / "_DONE.json").read_text())
    assert split["n_train"] + split["n_heldout"] == split["n_source"] and split["n_heldout"] > 0
    # coresets are exact, ascending, inside the training corpus
    import numpy as np

    for p in quick.glob("arms/*/select*/coreset.npy"):
        idx = np.load(p)
        assert idx.dtype == np.int64 and (np.diff(idx) > 0).all() and idx.max() < split["n_train"]


@pytest.mark.slow
@pytest.mark.subprocess
def test_rerun_skips_finished_steps(quick, capsys):
    n_cmds = len(json.loads((quick / "manifest.json").read_text())["commands"])
    out = _run(quick, capsys=capsys)
    assert " 0 to run" in out
    assert len(json.loads((quick / "manifest.json").read_text())["commands"]) == n_cmds
    # lose one arm's evaluation: only that step runs again
    shutil.rmtree(quick / "arms" / "cci@10%" / "s0" / "eval")
    out = _run(quick, capsys=capsys)
    assert " 1 to run" in out and "cci@10%/s0/eval" in out
    man = json.loads((quick / "manifest.json").read_text())
    assert [c["step"] for c in man["commands"][n_cmds:]] == ["cci@10%/s0/eval"]


@pytest.mark.slow
@pytest.mark.subprocess
def test_rerun_with_other_settings_is_refused(quick):
    from bioprune.launch.experiment import main

    with pytest.raises(SystemExit, match="other settings"):
        main(["--config", str(QUICK), "--out", str(quick), "--set", "training.steps=31",
              "--dry-run"])


@pytest.mark.slow
@pytest.mark.subprocess
def test_rerun_may_add_or_leave_out_strategies(quick, capsys):
    """Arms may be added or left out (selection.strategies); nothing else about the finished
    arms changes, so the rerun is allowed and says so."""
    out = _run(quick, ["--set", 'selection.strategies=["random","cci"]', "--dry-run"], capsys)
    assert "strategies changed" in out
    out = _run(quick, ["--dry-run"], capsys)      # back to the config's own strategies
    assert "strategies changed" in out and " 0 to run" in out


def test_planted_plan_has_dedup_then_cci():
    """The known-truth configuration: CCI on cluster representatives beside plain CCI, plain
    clusters and Random at 1 %, each compared with those three."""
    from bioprune.engine.experiments.report import Arm, plan_comparisons

    cfg = load_config(ROOT / "configs" / "experiments" / "rna-planted.toml")
    names = {a["name"] for a in arms(cfg)}
    assert {"cci_dedup@1%", "cci@1%", "cluster@1%", "random@1%", "full", "init"} <= names
    comps, _ = plan_comparisons([Arm(a["name"], a["strategy"], a["rate"]) for a in arms(cfg)],
                                cfg["selection"])
    pairs = {(c.a, c.b) for c in comps}
    assert {("cci_dedup@1%", "random@1%"), ("cci_dedup@1%", "cci@1%"),
            ("cci_dedup@1%", "cluster@1%")} <= pairs


def test_rna_1pct_plan():
    """The verdict configuration: the paper's rates, Random at 2x / 10x of the base, 3 seeds,
    every question's arm, two arms at a time, every arm scored on the whole held-out set."""
    cfg = load_config(ROOT / "configs" / "experiments" / "rna-1pct.toml")
    assert random_rates(cfg) == [0.005, 0.01, 0.02, 0.1]    # 2x and 10x of the 1% base rate
    names = {a["name"] for a in arms(cfg)}
    assert {"full", "init", "cci@0.5%", "cci@1%", "cci@2%", "topk@1%", "random@10%",
            "cci_woft@1%", "cluster@1%", "topk_1mask@1%", "cci_1mask@1%"} <= names
    assert "topk@2%" not in names                             # topk_rates = [0.01]
    assert len(cfg["seeds"]) >= 3 and cfg["training"]["mode"] == "steps"
    assert cfg["training"]["workers"] == 2
    assert {"--mlm-all", "--mlm-mask-seed"} <= set(cfg["evaluation"]["extra_args"])
    epochs = load_config(ROOT / "configs" / "experiments" / "rna-1pct.toml",
                         {"training.mode": "epochs", "training.epochs": 10})
    assert epochs["training"]["epochs"] == 10


def test_calibration_and_known_truth_configs_plan():
    cal = load_config(ROOT / "configs" / "experiments" / "rna-calibrate.toml")
    assert cal["corpus"]["calibrate"] and {a["strategy"] for a in arms(cal)} == {"full", "random",
                                                                                 "init"}
    planted = load_config(ROOT / "configs" / "experiments" / "rna-planted.toml")
    assert planted["corpus"]["planted"]["file"] in planted["corpus"]["files"]
    assert {"random@1%", "cci@1%", "cluster@1%"} <= {a["name"] for a in arms(planted)}
    for name in ("protein-1pct", "protein-calibrate"):
        path = ROOT / "configs" / "experiments" / f"{name}.toml"
        assert load_config(path)["molecule"] == "protein"
