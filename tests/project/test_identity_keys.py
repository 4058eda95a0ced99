"""Every field of each stage's settings is classified: part of the run identity (a rerun that
changes it starts afresh or is refused) or run-only (where and how the run runs). A field added
without a decision fails here, instead of letting a stale run resume across it."""
import dataclasses

import pytest

from bioprune.engine.influence import pipeline as score
from bioprune.engine.io import run_identity
from bioprune.engine.selection import checks as select_checks
from bioprune.engine.selection.pipeline import SelectSettings
from bioprune.engine.training import checks as train_checks
from bioprune.engine.training.pipeline import PretrainSettings

STAGES = {
    "score": (score.ScoreSettings, score.RESULT_KEYS, score.RUN_ONLY_KEYS),
    "pretrain": (PretrainSettings, train_checks.IDENTITY_KEYS, train_checks.RUN_ONLY_KEYS),
    "select": (SelectSettings, select_checks.IDENTITY_KEYS, select_checks.RUN_ONLY_KEYS),
}


@pytest.mark.parametrize("stage", STAGES)
def test_every_setting_is_identity_or_run_only(stage):
    cls, identity, run_only = STAGES[stage]
    fields = {f.name for f in dataclasses.fields(cls)}
    both = set(identity) & set(run_only)
    assert not both - {"molecule", "on_invalid"}, f"{stage}: in both lists: {sorted(both)}"
    assert fields - set(identity) - set(run_only) == set(), \
        f"{stage}: classify these settings in the identity or the run-only list"
    assert set(identity) - fields == set(), f"{stage}: identity keys that are no setting"
    assert set(run_only) - fields == set(), f"{stage}: run-only keys that are no setting"


@pytest.mark.parametrize("stage", STAGES)
def test_changing_any_identity_setting_changes_the_identity(stage):
    cls, identity, _ = STAGES[stage]
    base = cls(**({"scores": "s", "strategy": "cci", "out": "o"} if cls is SelectSettings else {}))
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
