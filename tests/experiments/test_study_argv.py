"""The study launches score.py, select_coreset.py, pretrain.py and evaluate.py with command lines
made from their settings dataclasses (``runtime.flags.to_argv``) plus each config's extra_args.
Every such command line of every shipped config must parse with the launcher's own parser into
the settings the study meant: a renamed or removed flag fails here, not in the middle of a study."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bioprune.engine.cli import settings_from_args
from bioprune.engine.evaluation.settings import EvalSettings
from bioprune.engine.experiments.config import SCORED, load_config
from bioprune.engine.experiments.study import Study
from bioprune.engine.influence.settings import ScoreSettings
from bioprune.engine.selection.pipeline import SelectSettings
from bioprune.engine.training.pipeline import PretrainSettings

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs" / "experiments").glob("*.toml"))


def _launcher(name: str):
    import importlib

    return importlib.import_module(f"bioprune.launch.{name}")


@pytest.fixture(scope="module")
def parsers():
    return {n: _launcher(n).parse_args for n in ("score", "pretrain", "select_coreset",
                                                  "evaluate")}


def _study(config: Path, tmp_path: Path) -> Study:
    study = Study(load_config(config), tmp_path / "exp", quiet=True)
    data = study.out / "data"
    data.mkdir(parents=True)
    held = data / "heldout" / "x.fasta"
    held.parent.mkdir()
    held.write_text(">a\nACGU\n")
    (data / "_DONE.json").write_text(json.dumps({"n_train": 1000,
                                                 "heldout_files": [str(held)]}))
    return study


def _parsed(parse, cls, argv):
    return settings_from_args(cls, parse([str(a) for a in argv]))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_launch_of_the_study_parses(config, tmp_path, parsers):
    study = _study(config, tmp_path)
    cfg = study.cfg
    ref = _parsed(parsers["pretrain"], PretrainSettings, study.reference_argv())
    assert ref.indices is None and ref.steps == cfg["reference"]["steps"]
    for run in ("score", "score_woft", "score_1mask"):
        s = _parsed(parsers["score"], ScoreSettings, study.score_argv(run))
        assert s.out == str(study.out / run)
        assert s.finetune_epochs == (0 if run == "score_woft"
                                     else cfg["scoring"]["finetune_epochs"])
        if not cfg["scoring"]["extra_args"]:
            assert s.mask_draws == (1 if run == "score_1mask" else None)
    for strategy in SCORED:
        out = study.out / "arms" / strategy / "select-s1"
        s = _parsed(parsers["select_coreset"], SelectSettings,
                    study.select_argv(strategy, 17, 1, out))
        assert (s.strategy, s.budget, s.seed, s.out) == (strategy.split("_")[0], 17, 1, str(out))
    for indices in (None, study.out / "arms" / "cci" / "select-s0" / "coreset.npy"):
        s = _parsed(parsers["pretrain"], PretrainSettings,
                    study.pretrain_argv(indices, 2, study.out / "p", 100))
        assert s.indices == (None if indices is None else str(indices)) and s.seed == 2
    for strategy in ("init", "cci"):
        s = _parsed(parsers["evaluate"], EvalSettings,
                    study.eval_argv(strategy, 0, study.out / "arms" / strategy / "s0"))
        assert (s.init == "random") == (strategy == "init")
        assert s.tasks == study._tasks(strategy)


def test_an_unknown_flag_fails_here(tmp_path, parsers):
    """What the test above guards against: a flag the launcher does not have (here a config's
    extra_args with a misspelt one) stops the test, not a study hours in."""
    study = _study(CONFIGS[0], tmp_path)
    study.cfg["scoring"]["extra_args"] = ["--mask-drawz", "2"]
    with pytest.raises(SystemExit):
        parsers["score"]([str(a) for a in study.score_argv("score")])


def test_every_launch_of_the_demo_parses(tmp_path, parsers):
    """launch/demo.py makes its command lines the same way."""
    import argparse

    demo = _launcher("demo")
    args = argparse.Namespace(model="rnafm", fraction=0.1, subset_size=2000, max_length=256,
                              pretrain_epochs=1)
    cls = {"score.py": (ScoreSettings, "score"), "select_coreset.py": (SelectSettings,
                                                                      "select_coreset"),
           "pretrain.py": (PretrainSettings, "pretrain")}
    steps = demo.steps(args, tmp_path, ["a.fasta", "b.csv"])
    assert [name for name, _, _ in steps] == ["score", "select cci", "select topi", "pretrain"]
    for _, script, argv in steps:
        settings_cls, launcher = cls[script]
        s = _parsed(parsers[launcher], settings_cls, argv)
        assert s.out.startswith(str(tmp_path))
