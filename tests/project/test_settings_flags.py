"""Each launcher's flags are generated from its stage's settings dataclass (runtime.flags): every
field is declared with ``setting(...)``, every flag the parser holds reaches a setting (or is one
of the few listed launcher flags), a flag's default is the setting's default (a library user and a
command-line user get the same run), and ``to_argv`` writes any settings back as a command line
that the launcher parses into the same settings."""
from __future__ import annotations

import dataclasses
import importlib

import pytest

from bioprune.engine.cli import settings_from_args
from bioprune.engine.evaluation.settings import EvalSettings
from bioprune.engine.influence.settings import ScoreSettings
from bioprune.engine.runtime import flags
from bioprune.engine.selection.pipeline import SelectSettings
from bioprune.engine.training.pipeline import PretrainSettings

# flags read by the launcher itself, not settings: --hf-path becomes --model/--model-size
# (cli.model_inputs), the rest are DeepSpeed's launcher flags
NOT_SETTINGS = {"hf_path", "local_rank", "deepspeed", "deepscale", "deepscale_config", "help"}
LAUNCHERS = {
    "score": (ScoreSettings, ["--data", "x.fasta", "--out", "o"]),
    "pretrain": (PretrainSettings, ["--data", "x.fasta", "--out", "o", "--all"]),
    "select_coreset": (SelectSettings, ["--scores", "s", "--strategy", "cci", "--out", "o",
                                        "--budget", "3"]),
    "evaluate": (EvalSettings, ["--model", "rnafm", "--run", "r", "--tasks", "rna", "--out", "o"]),
}
# settings far from the defaults, for the round trip (every flag kind: nargs, store_true,
# store_false, store_const, an exclusive group, a negative number, a list written as one token)
NON_DEFAULT = {
    "score": ScoreSettings(data=["a.fasta", "b.csv"], model="esm2", model_size="8m",
                           column="seq", checkpoint="w.pt", max_length=100, on_invalid="skip",
                           molecule="protein", subset_fraction=0.25, finetune_epochs=0,
                           damping=1e-8, mask_draws=3, mask_rate=0.2, mask_estimator="cross",
                           mask_corruption="bert", seed=3, precision="bf16", exclude_below=0.0,
                           keep_adapt_checkpoints=True, report_to="none", zero_stage=3,
                           offload="cpu", deepspeed_config="ds.json", out="o", overwrite=True,
                           mask_seed=7, backend="torch", corpus_cache_local="/l"),
    "pretrain": PretrainSettings(data=["a.fasta"], indices="c.npy", steps=5, lr=1e-3,
                                 weight_decay=0.0, warmup=0, heldout_size=0, save_steps=2,
                                 save_total_limit=1, grad_accum=2, out="o", zero_stage=0),
    "select_coreset": SelectSettings(scores="s", strategy="topk", fraction=0.5, out="o",
                                     data=[], hard_cutoff=0.0, no_plot=True, no_validate=True,
                                     threads=2, dedup=True, clusters="c.tsv", seed=2),
    "evaluate": EvalSettings(model="esmc", model_size="300m", tasks=["mlm", "protein-ss3"],
                             out="o", init="random", frozen=False, floor=True, seed=-1,
                             mlm_data=["a", "b"], mlm_all=True, progress=False, threads=1,
                             control="random-labels", csv_kind="regression"),
}


def load_launcher(script: str):
    return importlib.import_module(f"bioprune.launch.{script}")


def _settings(script: str, argv: list[str]):
    cls = LAUNCHERS[script][0]
    return settings_from_args(cls, load_launcher(script).parse_args(argv))


@pytest.mark.parametrize("script", LAUNCHERS)
def test_every_field_is_declared_with_its_flag(script):
    cls = LAUNCHERS[script][0]
    for f, m in flags.declared(cls):       # TypeError for a field made without setting(...)
        assert m.flags or f.name == "argv", f"{cls.__name__}.{f.name} has no flag"


@pytest.mark.parametrize("script", LAUNCHERS)
def test_flags_and_settings_agree(script):
    cls, argv = LAUNCHERS[script]
    parsed = vars(load_launcher(script).parse_args(argv))
    given = {a.lstrip("-").replace("-", "_") for a in argv if a.startswith("--")}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert set(parsed) - set(fields) - NOT_SETTINGS == set(), "flags that reach no setting"
    assert set(fields) - set(parsed) - {"argv"} == set(), "settings without a flag"
    for name, f in fields.items():
        default = flags.default_of(f)
        if name in given or default is dataclasses.MISSING or name == "argv":
            continue
        assert parsed[name] == default, \
            f"--{name.replace('_', '-')}: the flag's default {parsed[name]!r} is not the " \
            f"setting's {default!r}"


@pytest.mark.parametrize("script", LAUNCHERS)
def test_every_parser_flag_comes_from_the_settings(script, monkeypatch):
    """No launcher adds a setting's flag by hand: each argparse action is a field's flag or one of
    the launcher flags that are no setting."""
    import argparse

    cls = LAUNCHERS[script][0]
    parsers = []
    real = argparse.ArgumentParser.parse_args

    def grab(self, args=None, namespace=None):
        parsers.append(self)
        return real(self, args, namespace)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", grab)
    load_launcher(script).parse_args(LAUNCHERS[script][1])
    declared = {name for f, m in flags.declared(cls) for fl in m.flags
                for name in flags.flag_names(f, fl)}
    for action in parsers[0]._actions:
        if action.dest in NOT_SETTINGS:
            continue
        for name in action.option_strings:
            assert name in declared, f"{script}: {name} is added by hand, not from {cls.__name__}"


@pytest.mark.parametrize("script", LAUNCHERS)
def test_defaults_round_trip(script):
    cls, argv = LAUNCHERS[script]
    s = _settings(script, argv)
    assert _settings(script, flags.to_argv(s)) == s


@pytest.mark.parametrize("script", NON_DEFAULT)
def test_to_argv_round_trips_through_the_launcher(script):
    s = NON_DEFAULT[script]
    argv = flags.to_argv(s)
    assert _settings(script, argv) == s, argv


def test_to_argv_writes_the_flag_of_a_value_without_one():
    assert "--all" in flags.to_argv(PretrainSettings(data=["a"], out="o"))
    assert "--finetune" in flags.to_argv(NON_DEFAULT["evaluate"])
    assert "--seed=-1" in flags.to_argv(NON_DEFAULT["evaluate"])   # not read as a flag


def test_checks_without_the_command_line():
    """A library caller gets argparse's checks too: choices and exclusive groups."""
    from bioprune.engine.runtime.errors import UsageError

    with pytest.raises(UsageError, match="give --subset-size or --subset-fraction, not both"):
        flags.check_fields(ScoreSettings(data=["a"], subset_size=3, subset_fraction=0.5))
    with pytest.raises(UsageError, match="give one of --mask-draws, --mask-cover, --unmasked"):
        flags.check_fields(ScoreSettings(data=["a"], mask_draws=2, mask_cover=1,
                                         unmasked_loss=True))
    with pytest.raises(UsageError, match="--precision 'fp16': choose one of fp32, bf16"):
        flags.check_fields(ScoreSettings(data=["a"], precision="fp16"))
    with pytest.raises(UsageError, match="--mask-draws must be >= 1 \\(got 0\\)"):
        flags.check_fields(ScoreSettings(data=["a"], mask_draws=0))
