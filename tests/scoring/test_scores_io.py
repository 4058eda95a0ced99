"""The scores directory format (DESIGN.md "Run directory"): parts, _SUCCESS, reading, sharding,
validation."""
from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from bioprune.engine.io import scores as S


def _write(d, chunk, idx, score=None):
    idx = np.asarray(idx, dtype=np.int64)
    score = np.asarray(idx * 0.5 if score is None else score, dtype=np.float64)
    return S.write_part(d, chunk, idx, score, np.full(idx.size, 7), np.full(idx.size, 0.25))


def test_part_format_exact_dtypes(tmp_path):
    d = tmp_path / "scores"
    p = S.write_part(d, 3, [4, 5], np.array([1, 2], dtype=np.float32), np.array([10.0, 11.0]),
                     np.array([0.5, 0.25], dtype=np.float64))
    assert p == d / "part-000003.parquet" == S.part_path(d, 3)
    schema = pq.read_schema(p)
    assert [(f.name, str(f.type)) for f in schema] == [
        ("index", "int64"), ("score", "double"), ("length", "int32"), ("loss", "float")]
    got = S.read_scores(d, columns=S.COLUMNS)
    assert {k: v.dtype for k, v in got.items()} == S.DTYPES
    assert got["index"].tolist() == [4, 5] and got["length"].tolist() == [10, 11]
    # torch tensors are accepted too
    import torch

    S.write_part(d, 4, torch.tensor([6]), torch.tensor([0.5]), torch.tensor([3]),
                 torch.tensor([1.0]))
    assert S.read_scores(d)["index"].tolist() == [4, 5, 6]


def test_write_part_rejects_ragged_columns(tmp_path):
    with pytest.raises(ValueError, match="different lengths"):
        S.write_part(tmp_path, 0, [1, 2], [0.1], [1, 1], [0, 0])


def test_parts_listing_ignores_temporaries_and_sorts(tmp_path):
    d = tmp_path / "scores"
    _write(d, 12, [3])
    _write(d, 2, [0, 1])
    _write(d, 5, [])           # an empty part is valid
    (d / ".part-000007.parquet.abc.tmp").write_bytes(b"partial")
    (d / "notes.txt").write_text("x")
    assert [p.name for p in S.list_parts(d)] == [
        "part-000002.parquet", "part-000005.parquet", "part-000012.parquet"]
    assert S.finished_chunks(d) == {2, 5, 12}
    assert S.finished_chunks(tmp_path / "nope") == set()
    assert S.read_scores(d)["index"].tolist() == [0, 1, 3]
    assert S.part_rows(S.part_path(d, 5)) == 0


def test_atomic_write_leaves_no_temporary(tmp_path):
    d = tmp_path / "scores"
    _write(d, 0, [0, 1, 2])
    assert os.listdir(d) == ["part-000000.parquet"]


def test_success_marker(tmp_path):
    d = tmp_path / "scores"
    _write(d, 0, [0])
    with pytest.raises(S.ScoresError) as e:
        S.read_success(d)
    assert str(e.value) == (f"scoring did not finish: no _SUCCESS in {d}; "
                            "rerun launch/score.py with the same --out to resume")
    S.write_success(d, 1)
    assert S.read_success(d) == 1
    (d / "_SUCCESS").write_text("garbage")
    with pytest.raises(S.ScoresError, match="malformed"):
        S.read_success(d)


def test_read_scores_subset_of_parts_and_columns(tmp_path):
    d = tmp_path / "scores"
    _write(d, 0, [0, 1])
    _write(d, 1, [2, 3, 4])
    got = S.read_scores(d, parts=[S.part_path(d, 1)], columns=("score",))
    assert list(got) == ["score"] and got["score"].tolist() == [1.0, 1.5, 2.0]
    with pytest.raises(ValueError, match="unknown column"):
        S.read_scores(d, columns=("nope",))


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_shard_parts_disjoint_cover(world):
    parts = [f"p{i}" for i in range(11)]
    sizes = [5, 0, 100, 3, 3, 0, 50, 1, 1, 1, 9]
    for sz in (None, sizes):
        shares = [S.shard_parts(parts, r, world, sizes=sz) for r in range(world)]
        flat = [p for s in shares for p in s]
        assert sorted(flat) == sorted(parts) and len(flat) == len(parts)
        assert shares == [S.shard_parts(parts, r, world, sizes=sz) for r in range(world)]
    if world == 2:   # balanced by rows: the 100-row part and the 50-row part go to different ranks
        a, b = (S.shard_parts(parts, r, 2, sizes=sizes) for r in range(2))
        assert "p2" in a and "p6" in b


def test_check_scores_accepts_permutation(tmp_path):
    idx = np.random.default_rng(0).permutation(1000)
    assert S.check_scores(idx, np.ones(1000)) == 1000
    assert S.check_scores(idx, np.ones(1000), n=1000) == 1000


def test_check_scores_nonfinite_lists_first_indices():
    idx = np.arange(20)[::-1].copy()
    s = np.zeros(20)
    s[[3, 17, 9]] = [np.nan, np.inf, -np.inf]     # corpus indices 16, 2, 10
    with pytest.raises(S.ScoresError) as e:
        S.check_scores(idx, s)
    assert str(e.value) == "3 score(s) are NaN or infinite; first corpus indices: [2, 10, 16]"


@pytest.mark.parametrize("idx, n, words", [
    ([0, 1, 2, 2, 4], 5, ["1 corpus index(es) missing (first: [3])",
                          "1 row(s) repeat an index (first repeated: [2])"]),
    ([0, 1, 2], 4, ["1 corpus index(es) missing (first: [3])"]),
    ([0, 1, 2, 3, 1], 4, ["1 row(s) repeat an index (first repeated: [1])"]),
    ([0, 1, 9], 3, ["outside 0..2", "[9]"]),
    ([0, -1, 2], 3, ["outside 0..2", "[-1]"]),
])
def test_check_scores_index_errors(idx, n, words):
    with pytest.raises(S.ScoresError) as e:
        S.check_scores(np.array(idx), np.zeros(len(idx)), n=n)
    for w in words:
        assert w in str(e.value)


def test_check_scores_exact_where_moments_collide():
    # same count, sum and sum of squares as 0..6, yet 1, 2, 6 are missing: a moment-based check
    # would accept it; the presence bitmap does not.
    idx = np.array([0, 0, 3, 4, 4, 5, 5])
    assert idx.sum() == sum(range(7)) and (idx ** 2).sum() == sum(i * i for i in range(7))
    with pytest.raises(S.ScoresError) as e:
        S.check_scores(idx, np.zeros(7), n=7)
    assert "3 corpus index(es) missing (first: [1, 2, 6])" in str(e.value)
    assert "3 row(s) repeat an index (first repeated: [0, 4, 5])" in str(e.value)


def test_read_share_single_process(tmp_path):
    d = tmp_path / "scores"
    _write(d, 0, [2, 0])
    _write(d, 1, [])
    _write(d, 2, [1, 3])
    with pytest.raises(S.ScoresError, match="no _SUCCESS"):
        S.read_share(d)
    S.write_success(d, 4)
    data, n = S.read_share(d)
    assert n == 4 and sorted(data["index"].tolist()) == [0, 1, 2, 3]
    S.write_success(d, 5)
    with pytest.raises(S.ScoresError, match="hold 4 rows but _SUCCESS says 5"):
        S.read_share(d)
    with pytest.raises(S.ScoresError, match="does not exist"):
        S.read_share(tmp_path / "missing")
    e = tmp_path / "empty"
    e.mkdir()
    S.write_success(e, 0)
    with pytest.raises(S.ScoresError, match="empty"):
        S.read_share(e)
