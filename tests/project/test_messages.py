"""Messages that say what went wrong and what to do (issue: misleading messages), and the
counted handling of repeated inputs and ids: each case fails on the old behaviour."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bioprune.engine.data.corpus import load_corpus
from bioprune.engine.evaluation.tasks import EvalError, _file_split
from bioprune.engine.io.run_identity import load_indices
from bioprune.engine.runtime.errors import UsageError
from bioprune.engine.selection.pipeline import fraction_budget
from bioprune.engine.selection.rules import SelectionError


def test_indices_as_record_ids_or_a_clear_error(tmp_path):
    """--indices takes a .npy of corpus indices or a text list of record ids (the first
    tab-separated column); any other file is named as neither, never as "pickled data"."""
    from bioprune.engine.data.record_ids import ids_to_indices

    p = tmp_path / "ids.txt"
    p.write_text("# my coreset\nx3\tmore columns\n\nx1\n")
    ids = load_indices(p)
    assert ids == ["x3", "x1"]
    fa = tmp_path / "c.fasta"
    fa.write_text(">x0\nACGU\n>x1\nGGA\n>x2\nCCA\n>x3\nAAU\n")
    corpus = load_corpus([fa], "rna", tmp_path / "cache")
    assert ids_to_indices(ids, corpus, p).tolist() == [3, 1]
    with pytest.raises(UsageError, match=r"1 record ids are not in --data \(first: \['x9'\]\)"):
        ids_to_indices(["x1", "x9"], corpus, p)
    binary = tmp_path / "ids.npy"
    binary.write_bytes(b"\x00\x01\x02garbage")
    with pytest.raises(UsageError, match="neither a NumPy .npy file nor a text list") as e:
        load_indices(binary)
    assert "pickle" not in str(e.value)


def test_an_empty_indices_file_says_it_is_empty(tmp_path):
    p = tmp_path / "empty.npy"
    np.save(p, np.zeros(0, np.int64))
    with pytest.raises(UsageError, match="holds no indices"):
        load_indices(p)
    np.save(p, np.array([2, 0], np.int64))
    assert load_indices(p).tolist() == [2, 0]


def test_a_fraction_out_of_range_talks_about_the_fraction():
    with pytest.raises(SelectionError) as e:
        fraction_budget("cci", 1.0, 300)
    msg = str(e.value)
    assert msg.startswith("--fraction 1.0") and "--fraction <= 0.95" in msg
    assert "budget 300" not in msg
    with pytest.raises(SelectionError, match=r"--fraction >= "):
        fraction_budget("topk", 0.001, 300)
    assert fraction_budget("cci", 0.95, 300) == 285
    assert fraction_budget("random", 1.0, 300) == 300


def test_validation_rows_of_a_user_csv_are_counted_not_silent(capsys):
    df = pd.DataFrame({"split": ["train", "test", "dev", "Valid", "train", "test"]})
    train, test, info = _file_split(df, "my.csv", "csv:my.csv")
    assert train.tolist() == [0, 4] and test.tolist() == [1, 5] and info["ignored_rows"] == 2
    err = capsys.readouterr().err
    assert "2 rows" in err and "my.csv" in err and "dev" in err
    with pytest.raises(EvalError, match="'holdout'"):
        _file_split(pd.DataFrame({"split": ["train", "test", "holdout"]}), "my.csv", "csv")


def test_repeated_inputs_and_ids_are_warned_with_counts(tmp_path, capsys):
    fa = tmp_path / "a.fasta"
    fa.write_text(">x1 desc\nACGU\n>x2\nACG\n>x1\nGGG\n>x3\nAAAA\n")
    c = load_corpus([fa], "rna", tmp_path / "c1")
    assert len(c) == 4 and c.repeated_ids() == {"records": 1, "example": "x1"}
    err = capsys.readouterr().err
    assert "1 record(s) repeat an id" in err and "'x1'" in err and "given 2 times" not in err
    c = load_corpus([fa, fa], "rna", tmp_path / "c2")
    assert len(c) == 8 and c.repeated_ids()["records"] == 5      # x1 x2 x1 x3 once more each
    err = capsys.readouterr().err
    assert "given 2 times" in err and "5 record(s)" in err
    fb = tmp_path / "b.fasta"
    fb.write_text(">y1\nACGU\n>y2\nACG\n")
    load_corpus([fb], "rna", tmp_path / "c3")
    assert "warning" not in capsys.readouterr().err                # clean input: no word


def test_scoring_summary_warns_when_one_thing_drives_the_ranking():
    from bioprune.engine.influence.diagnostics import summary_lines

    calm = summary_lines({"feed_forward": 0.5, "attention_v": 0.3, "lm_head": 0.2}, 0.1)
    assert not any(line.startswith("warning") for line in calm)
    assert calm[0].startswith("score mass by parameter group: feed_forward 50%")
    loud = summary_lines({"positional_embeddings": 0.8, "feed_forward": 0.2}, -0.72)
    warnings = [line for line in loud if line.startswith("warning")]
    assert len(warnings) == 2
    assert "positional_embeddings holds 80%" in warnings[0] and "--params" in warnings[0]
    assert "length (Spearman -0.72)" in warnings[1]
