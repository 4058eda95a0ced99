"""Each launcher's flags and its stage's settings dataclass say the same thing: every flag reaches
a setting (``settings_from_args`` drops unknown names silently, so a flag without a field would
be ignored), every setting has a flag, and a flag's default is the setting's default (a library
user and a command-line user get the same run)."""
from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest

from bioprune.engine.influence.pipeline import ScoreSettings
from bioprune.engine.selection.pipeline import SelectSettings
from bioprune.engine.training.pipeline import PretrainSettings

ROOT = Path(__file__).resolve().parents[2]
# flags read by the launcher itself, not settings: --hf-path becomes --model/--model-size
# (cli.model_inputs), --all is "no --indices", the rest are DeepSpeed's launcher flags
NOT_SETTINGS = {"hf_path", "all", "local_rank", "deepspeed", "deepscale", "deepscale_config"}
LAUNCHERS = {
    "score": (ScoreSettings, ["--data", "x.fasta", "--out", "o"]),
    "pretrain": (PretrainSettings, ["--data", "x.fasta", "--out", "o", "--all"]),
    "select_coreset": (SelectSettings, ["--scores", "s", "--strategy", "cci", "--out", "o",
                                        "--budget", "3"]),
}


def _parse(script: str, argv: list[str]) -> dict:
    spec = importlib.util.spec_from_file_location(f"flags_{script}",
                                                  ROOT / "launch" / f"{script}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return vars(mod.parse_args(argv))


@pytest.mark.parametrize("script", LAUNCHERS)
def test_flags_and_settings_agree(script):
    cls, argv = LAUNCHERS[script]
    parsed = _parse(script, argv)
    given = {a.lstrip("-").replace("-", "_") for a in argv if a.startswith("--")}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert set(parsed) - set(fields) - NOT_SETTINGS == set(), "flags that reach no setting"
    assert set(fields) - set(parsed) == set(), "settings without a flag"
    for name, f in fields.items():
        if name in given or f.default is dataclasses.MISSING and \
                f.default_factory is dataclasses.MISSING:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        assert parsed[name] == default, \
            f"--{name.replace('_', '-')}: the flag's default {parsed[name]!r} is not the " \
            f"setting's {default!r}"
