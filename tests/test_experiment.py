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


def test_quick_study_every_arm_and_outputs(quick):
    cfg = load_config(QUICK)
    with open(quick / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["arm", "strategy", "rate", "seed", "task", "metric", "value"]
    want = {a["name"] for a in arms(cfg)}
    assert {r["arm"] for r in rows} == want
    assert {"full", "random", "topk", "cci", "cci_woft", "cluster", "init"} == {r["strategy"] for r in rows}
    assert {r["task"] for r in rows} == set(cfg["evaluation"]["tasks"])
    md = (quick / "results.md").read_text()
    assert "CCI@10% beats Random@10%" in md and "Random at 2×" in md
    for t in cfg["evaluation"]["tasks"]:
        assert (quick / "plots" / f"{t}.png").stat().st_size > 1000
    man = json.loads((quick / "manifest.json").read_text())
    assert man["commit"]["hash"] and man["versions"]["torch"] and man["commands"]
    assert {"reference", "score", "pretrain", "evaluate", "select"} <= set(man["wall_s_per_phase"])
    # compute-matched: every arm ran the same number of optimizer steps, recorded
    steps = {json.loads(p.read_text())["steps"] for p in quick.glob("arms/*/s*/pretrain/_DONE.json")}
    assert steps == {cfg["training"]["steps"]}
    # the held-out part is disjoint from the training corpus and never scored
    split = json.loads((quick / "data" / "_DONE.json").read_text())
    assert split["n_train"] + split["n_heldout"] == split["n_source"] and split["n_heldout"] > 0
    # coresets are exact, ascending, inside the training corpus
    import numpy as np

    for p in quick.glob("arms/*/select*/coreset.npy"):
        idx = np.load(p)
        assert idx.dtype == np.int64 and (np.diff(idx) > 0).all() and idx.max() < split["n_train"]


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


def test_rerun_with_other_settings_is_refused(quick):
    from bioprune.launch.experiment import main

    with pytest.raises(SystemExit, match="other settings"):
        main(["--config", str(QUICK), "--out", str(quick), "--set", "training.steps=31",
              "--dry-run"])


def test_rna_tiny_plan():
    cfg = load_config(ROOT / "configs" / "experiments" / "rna-tiny.toml")
    assert random_rates(cfg) == [0.05, 0.1, 0.2, 0.5]      # 2x and 10x of the 5% base rate
    names = {a["name"] for a in arms(cfg)}
    assert {"full", "init", "cci@10%", "topk@5%", "random@50%", "cci_woft@10%", "cluster@10%"} <= names
    assert len(cfg["seeds"]) >= 3 and cfg["training"]["mode"] == "steps"
    epochs = load_config(ROOT / "configs" / "experiments" / "rna-tiny.toml",
                         {"training.mode": "epochs", "training.epochs": 10})
    assert epochs["training"]["epochs"] == 10
