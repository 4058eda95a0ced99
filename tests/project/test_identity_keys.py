"""The run identity (the settings a rerun must match to resume) is generated from each stage's
settings dataclass: every field decides ``identity=True/False`` where it is declared, the key
lists come from those decisions, and the start-up of each stage records every identity field in
``run_config.json`` and no run-only one. A field added without a decision fails here (and at
import), instead of letting a stale run resume across it."""
import dataclasses

import numpy as np
import pytest

from bioprune.engine.influence import settings as score
from bioprune.engine.io import run_identity
from bioprune.engine.runtime import flags, validate
from bioprune.engine.selection.pipeline import SelectSettings
from bioprune.engine.training.pipeline import PretrainSettings

STAGES = {"score": score.ScoreSettings, "pretrain": PretrainSettings, "select": SelectSettings}
# settings recorded by the start-up itself, whatever their field says: molecule / on_invalid by
# run_identity.identity, --indices as the digest of the file, --scores by its _SUCCESS
RECORDED_APART = {"score": {"molecule", "on_invalid"},
                  "pretrain": {"molecule", "on_invalid", "indices"}, "select": {"scores"}}


def _base(cls):
    return cls(**({"scores": "s", "strategy": "cci", "out": "o"} if cls is SelectSettings else {}))


@pytest.mark.parametrize("stage", STAGES)
def test_every_setting_is_identity_or_run_only(stage):
    cls = STAGES[stage]
    fields = {f.name for f in dataclasses.fields(cls)}
    identity, run_only = set(flags.identity_keys(cls)), set(flags.run_only_keys(cls))
    assert identity | run_only == fields and not identity & run_only


def test_a_field_without_a_decision_is_refused():
    @dataclasses.dataclass
    class Undecided(PretrainSettings):
        new_knob: int = flags.setting(1, identity=None)

    @dataclasses.dataclass
    class Undeclared(PretrainSettings):
        other_knob: int = 1

    with pytest.raises(TypeError, match="decide identity=True/False for new_knob"):
        flags.identity_keys(Undecided)
    with pytest.raises(TypeError, match="other_knob is not declared with setting"):
        flags.identity_keys(Undeclared)


@pytest.mark.parametrize("stage", STAGES)
def test_changing_any_identity_setting_changes_the_identity(stage):
    cls = STAGES[stage]
    identity = flags.identity_keys(cls)
    base = _base(cls)
    before = run_identity.run_config.result_config(base, identity)
    for key in identity:
        changed = dataclasses.replace(base, **{key: _other(getattr(base, key))})
        after = run_identity.run_config.result_config(changed, identity)
        assert after != before, f"{stage}: changing {key} leaves the identity unchanged"


def _other(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, list):
        return [*value, "x"]
    return "other" if value != "other" else "another"


class _Opened(Exception):
    pass


@pytest.fixture
def recorded(monkeypatch):
    """The identity each stage's start-up would write to run_config.json (the flag checks and
    the directory lock skipped)."""
    got = {}

    def open_run(out, config, **kw):
        got["config"] = config
        raise _Opened

    monkeypatch.setattr(validate, "checked_together", lambda *a, **k: None)
    monkeypatch.setattr(run_identity, "open_run", open_run)
    monkeypatch.setattr(run_identity, "finished", lambda *a, **k: False)
    monkeypatch.setattr(run_identity, "refuse_other", lambda *a, **k: None)
    return got


def _identity_of(stage, tmp_path, recorded):
    from bioprune.engine.influence.checks import begin_scoring
    from bioprune.engine.selection.checks import begin_selection
    from bioprune.engine.training.checks import begin_pretraining

    if stage == "select":
        (tmp_path / "scores").mkdir()
        (tmp_path / "scores" / "_SUCCESS").write_text("3\n")
        return begin_selection(SelectSettings(scores=str(tmp_path / "scores"), strategy="cci",
                                              out=str(tmp_path / "o")))
    with pytest.raises(_Opened):
        if stage == "score":
            s = score.ScoreSettings(data=["a.fasta"], out=str(tmp_path / "o"))
            begin_scoring(s, score.RESULT_KEYS, lambda: score.mask_plan(s).describe())
        else:
            np.save(tmp_path / "idx.npy", np.arange(3))
            begin_pretraining(PretrainSettings(data=["a.fasta"], indices=str(tmp_path / "idx.npy"),
                                               out=str(tmp_path / "o")))
    return recorded["config"]


@pytest.mark.parametrize("stage", STAGES)
def test_the_recorded_identity_holds_every_identity_field(stage, tmp_path, recorded):
    """What a resume compares: every identity field, in field order, and no run-only field."""
    cls = STAGES[stage]
    config = _identity_of(stage, tmp_path, recorded)
    names = {f.name for f in dataclasses.fields(cls)} - RECORDED_APART[stage]
    keys = [k for k in config if k in names]
    assert keys == list(flags.identity_keys(cls))
