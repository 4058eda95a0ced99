"""Exact selection (DESIGN.md step 4) in one process: the engine against the brute-force reference,
hand-checked CCI cases, bad input, and the command line (called in-process)."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from bioprune.engine.io import scores as S
from bioprune.engine.runtime.hashing import SELECT, hash_keys
from bioprune.engine.selection.exact import ScoresError, SelectionError, select
from bioprune.engine.selection.radix import decode_desc, encode_desc
from bioprune.engine.selection.rules import strata_budgets
from test_selection_reference import ref_algorithm1, ref_cci, ref_select, ref_topk

ROOT = Path(__file__).resolve().parents[2]


def tie_heavy(n, seed=0, decimals=1):
    """Scores with many exact ties (a rounded gamma), corpus indices shuffled."""
    rng = np.random.default_rng(seed)
    idx = rng.permutation(n).astype(np.int64)
    score = np.round(rng.gamma(2.0, size=n), decimals)
    return idx, score


def check_against_reference(idx, score, strategy, budget, beta=0.05, K=50, seed=0):
    r = select(idx, score, strategy, budget, hard_cutoff=beta, strata=K, seed=seed)
    assert r.indices.dtype == np.int64
    if strategy == "cci":
        want, det = ref_cci(idx, score, budget, beta, K, seed)
        st = r.report["strata"]
        assert st["sizes"] == det["sizes"]
        assert st["budgets"] == det["budgets"]
        assert st["picks"] == det["picks"]
        assert (st["lo"], st["hi"]) == (det["lo"], det["hi"])
        assert r.report["cut"]["dropped"] == det["c"]
    else:
        want = ref_select(idx, score, strategy, budget, seed=seed)
    np.testing.assert_array_equal(r.indices, want)
    assert r.report["selected"] == budget == r.indices.size
    return r


# ----------------------------------------------------------------------------- encodings

def test_order_preserving_encoding():
    x = np.array([-np.inf, -1e308, -1.0, -5e-324, -0.0, 0.0, 5e-324, 1e-300, 1.0, 2.0, 1e308,
                  np.inf])
    d = encode_desc(x)
    # ascending keys = descending scores; -0.0 and +0.0 share a key
    assert (np.diff(d.astype(object)) <= 0).all()
    assert d[4] == d[5] and len(set(d.tolist())) == x.size - 1
    np.testing.assert_array_equal(decode_desc(d), x + 0.0)
    rng = np.random.default_rng(1)
    y = rng.standard_normal(10000) * 10.0 ** rng.integers(-300, 300, 10000)
    assert np.array_equal(np.argsort(encode_desc(y), kind="stable"),
                          np.argsort(-y, kind="stable"))


# ----------------------------------------------------------------------------- vs the reference

@pytest.mark.parametrize("n", [1, 2, 3, 10, 257, 5000])
@pytest.mark.parametrize("strategy", ["topk", "cci", "random"])
def test_matches_brute_force(n, strategy):
    idx, score = tie_heavy(n, seed=n)
    c = math.floor(0.05 * n)
    top = n - c if strategy == "cci" else n
    for budget in sorted({1, max(1, n // 7), max(1, n // 2), top}):
        check_against_reference(idx, score, strategy, budget, K=7 if n < 100 else 50, seed=3)


@pytest.mark.parametrize("beta, K", [(0.0, 1), (0.0, 50), (0.3, 3), (0.05, 200), (0.01, 4096)])
def test_cci_parameters_match_brute_force(beta, K):
    idx, score = tie_heavy(3000, seed=5, decimals=2)
    n = idx.size
    for budget in (1, 100, 2000, n - math.floor(beta * n)):
        check_against_reference(idx, score, "cci", budget, beta=beta, K=K, seed=11)


def test_wide_range_and_negative_scores():
    rng = np.random.default_rng(2)
    n = 4000
    score = rng.standard_normal(n) * 10.0 ** rng.integers(-30, 30, n)
    score[::17] = 0.0
    score[::19] = -0.0          # compares equal to 0.0: a tie, broken by index
    score[::23] = 1e-310        # subnormal
    idx = rng.permutation(n)
    for strategy in ("topk", "cci", "random"):
        check_against_reference(idx, score, strategy, 333, K=13)


def test_all_equal_scores():
    n = 1000
    idx = np.random.default_rng(0).permutation(n)
    score = np.full(n, 0.75)
    r = check_against_reference(idx, score, "topk", 10)
    assert r.indices.tolist() == list(range(10))           # ties: the smaller indices
    r = check_against_reference(idx, score, "cci", 100)
    st = r.report["strata"]
    assert st["lo"] == st["hi"] == 0.75
    assert st["sizes"] == [950] + [0] * 49 and st["budgets"] == [100] + [0] * 49
    check_against_reference(idx, score, "random", 100)


def test_n_equals_one():
    for strategy in ("topk", "cci", "random"):
        r = select(np.array([0]), np.array([3.5]), strategy, 1)
        assert r.indices.tolist() == [0]
    with pytest.raises(SelectionError, match="allowed 1..1"):
        select(np.array([0]), np.array([3.5]), "topk", 2)


def test_budget_equals_n():
    idx, score = tie_heavy(500)
    for strategy in ("topk", "random"):
        r = select(idx, score, strategy, 500)
        assert r.indices.tolist() == list(range(500))
    r = select(idx, score, "cci", 475)                    # n - floor(0.05 n)
    np.testing.assert_array_equal(r.indices, ref_cci(idx, score, 475)[0])


def test_topk_breaks_ties_by_index():
    idx = np.array([5, 4, 1, 0, 2, 3])
    score = np.array([2.0, 1.0, 2.0, 1.0, 2.0, 1.0])     # 2.0 at indices 5, 1, 2; 1.0 at 4, 0, 3
    assert select(idx, score, "topk", 2).indices.tolist() == [1, 2]
    assert select(idx, score, "topk", 4).indices.tolist() == [0, 1, 2, 5]


def _hand_case():
    # corpus index:  0   1  2  3  4  5  6  7  8  9
    score = np.array([10, 0, 1, 1, 2, 5, 9, 9, 9, 9], dtype=np.float64)
    return np.arange(10), score


def _smallest_keys(members, m, seed=0):
    members = np.asarray(members)
    k = hash_keys(seed, members, SELECT)
    return sorted(members[np.argsort(k)[:m]].tolist())


@pytest.mark.parametrize("budget, budgets", [
    # strata sizes [4, 1, 4] (computed below); Algorithm 1 visits 1 (size 1), 0, 2 (size 4, tie
    # by stratum number):
    (5, [2, 1, 2]),   # s1: min(1, 5//3=1)=1, left 4; s0: min(4, 4//2)=2, left 2; s2: min(4, 2)=2
    (8, [3, 1, 4]),   # s1: min(1, 8//3=2)=1, left 7; s0: min(4, 7//2)=3, left 4; s2: 4
    (9, [4, 1, 4]),   # everything that is left (n - c = 9)
    (2, [1, 0, 1]),   # s1: min(1, 2//3=0)=0, left 2; s0: min(4, 2//2)=1, left 1; s2: 1
])
def test_cci_by_hand(budget, budgets):
    idx, score = _hand_case()
    r = select(idx, score, "cci", budget, hard_cutoff=0.1, strata=3, seed=0)
    rep = r.report
    # beta = 0.1: c = 1 drops corpus index 0 (score 10). Remaining scores 0..9: lo = 0, hi = 9;
    # stratum = min(2, floor(s / 9 * 3)): 0, 1, 1, 2 -> 0; 5 -> 1; 9 -> 3 -> 2.
    assert rep["cut"]["dropped"] == 1 and rep["cut"]["retained_max_score"] == 9.0
    assert (rep["strata"]["lo"], rep["strata"]["hi"]) == (0.0, 9.0)
    assert rep["strata"]["sizes"] == [4, 1, 4]
    assert rep["strata"]["visit_order"] == [1, 0, 2]
    assert rep["strata"]["budgets"] == budgets == ref_algorithm1([4, 1, 4], budget)
    want = sorted(_smallest_keys([1, 2, 3, 4], budgets[0]) + _smallest_keys([5], budgets[1])
                  + _smallest_keys([6, 7, 8, 9], budgets[2]))
    assert r.indices.tolist() == want
    assert 0 not in r.indices


def test_cci_hi_equals_lo_after_cut():
    idx = np.arange(4)
    r = select(idx, np.array([5.0, 1.0, 1.0, 1.0]), "cci", 2, hard_cutoff=0.25, strata=4)
    st = r.report["strata"]
    assert st["lo"] == st["hi"] == 1.0 and st["sizes"] == [3, 0, 0, 0]
    assert st["budgets"] == [2, 0, 0, 0]
    assert r.indices.tolist() == _smallest_keys([1, 2, 3], 2)


def test_strata_budgets_total_is_budget():
    rng = np.random.default_rng(4)
    for _ in range(200):
        K = int(rng.integers(1, 20))
        sizes = rng.integers(0, 50, K) * rng.integers(0, 2, K)
        total = int(sizes.sum())
        if total == 0:
            continue
        b = int(rng.integers(1, total + 1))
        got = strata_budgets(sizes, b)
        assert got.tolist() == ref_algorithm1(sizes.tolist(), b)
        assert got.sum() == b and (got <= sizes).all()


def test_torch_tensors_accepted():
    import torch

    idx, score = tie_heavy(300)
    r = select(torch.from_numpy(idx), torch.from_numpy(score), "topk", 30)
    np.testing.assert_array_equal(r.indices, ref_topk(idx, score, 30))


def test_report_summary_and_histogram():
    idx, score = tie_heavy(5000, decimals=3)
    r = select(idx, score, "cci", 400)
    rep = r.report
    s = rep["score_summary"]
    assert s["min"] == score.min() and s["max"] == score.max()
    assert s["mean"] == pytest.approx(score.mean(), rel=1e-12)
    for q, v in s["quantiles"].items():
        assert v == np.quantile(score, float(q), method="inverted_cdf"), q
    h = rep["histogram"]
    assert sum(h["counts"]) == 5000 and sum(h["picked"]) == 400
    assert len(h["edges"]) == len(h["counts"]) + 1
    assert rep["strata"]["edges"][0] == rep["strata"]["lo"]
    assert rep["strata"]["edges"][-1] == pytest.approx(rep["strata"]["hi"])
    json.dumps(rep)   # JSON-able


# ----------------------------------------------------------------------------- bad input (API)

def test_nonfinite_scores_error():
    idx = np.arange(10)[::-1].copy()
    score = np.ones(10)
    score[[0, 4, 8]] = [np.nan, np.inf, -np.inf]          # corpus indices 9, 5, 1
    for strategy in ("topk", "cci", "random"):
        with pytest.raises(ScoresError) as e:
            select(idx, score, strategy, 2)
        assert str(e.value) == "3 score(s) are NaN or infinite; first corpus indices: [1, 5, 9]"


@pytest.mark.parametrize("idx, msg", [
    ([0, 1, 2, 2], "1 corpus index(es) missing (first: [3]); 1 row(s) repeat an index "
                   "(first repeated: [2])"),
    ([0, 1, 2, 5], "outside 0..3"),
])
def test_index_errors(idx, msg):
    with pytest.raises(ScoresError) as e:
        select(np.array(idx), np.ones(len(idx)), "topk", 1)
    assert msg in str(e.value)


@pytest.mark.parametrize("strategy, budget, msg", [
    ("topk", 0, "budget 0 is out of range: allowed 1..100"),
    ("topk", 101, "budget 101 is out of range: allowed 1..100"),
    ("random", -3, "budget -3 is out of range: allowed 1..100"),
    ("cci", 96, "budget 96 is out of range: allowed 1..95 (cci keeps at most n - floor(beta*n)"),
    ("cci", 0, "allowed 1..95"),
])
def test_budget_range_errors(strategy, budget, msg):
    idx, score = tie_heavy(100)
    with pytest.raises(SelectionError) as e:
        select(idx, score, strategy, budget)
    assert msg in str(e.value)
    select(idx, score, strategy, 95)                       # the top of the range is fine


def test_other_request_errors():
    idx, score = tie_heavy(100)
    with pytest.raises(SelectionError, match="unknown strategy"):
        select(idx, score, "best", 5)
    with pytest.raises(SelectionError, match="hard-cutoff"):
        select(idx, score, "cci", 5, hard_cutoff=1.0)
    with pytest.raises(SelectionError, match="strata"):
        select(idx, score, "cci", 5, strata=0)
    with pytest.raises(SelectionError, match="different lengths"):
        select(idx, score[:-1], "topk", 5)
    with pytest.raises(ScoresError, match="0 rows"):
        select(np.zeros(0, np.int64), np.zeros(0), "topk", 1)
    with pytest.raises(ScoresError, match="_SUCCESS says 99"):
        select(idx, score, "topk", 5, n=99)


# ----------------------------------------------------------------------------- command line

def _cli():
    spec = importlib.util.spec_from_file_location("bioprune_launch_select",
                                                  ROOT / "launch" / "select_coreset.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def write_scores(d, idx, score, sizes, empty_at=None, success=True):
    """Parts of the given sizes (plus an empty part at position ``empty_at``)."""
    d = Path(d)
    cuts = np.cumsum(sizes)[:-1]
    chunk = 0
    for i, part in enumerate(np.split(np.arange(idx.size), cuts)):
        if empty_at == i:
            S.write_part(d, chunk, [], [], [], [])
            chunk += 1
        S.write_part(d, chunk, idx[part], score[part], np.full(part.size, 10), np.zeros(part.size))
        chunk += 1
    if success:
        S.write_success(d, idx.size)
    return d


@pytest.fixture
def run_dir(tmp_path):
    idx, score = tie_heavy(1200, seed=7)
    write_scores(tmp_path / "run" / "scores", idx, score, [500, 3, 0, 697], empty_at=1)
    return tmp_path / "run", idx, score


def test_cli_outputs(run_dir, tmp_path, capsys):
    run, idx, score = run_dir
    cli = _cli()
    out = tmp_path / "sel"
    assert cli.main(["--scores", str(run / "scores"), "--strategy", "cci", "--budget", "100",
                     "--strata", "10", "--seed", "3", "--out", str(out)]) == 0
    core = np.load(out / "coreset.npy")
    assert core.dtype == np.int64 and (np.diff(core) > 0).all()
    want, det = ref_cci(idx, score, 100, 0.05, 10, 3)
    np.testing.assert_array_equal(core, want)
    rep = json.loads((out / "selection.json").read_text())
    assert rep["strategy"] == "cci" and rep["n"] == 1200 and rep["budget"] == 100
    assert rep["parameters"] == {"budget": 100, "seed": 3, "hard_cutoff": 0.05, "strata": 10}
    assert rep["strata"]["sizes"] == det["sizes"] and rep["strata"]["budgets"] == det["budgets"]
    assert rep["strata"]["picks"] == det["picks"] and len(rep["strata"]["edges"]) == 11
    assert set(rep["score_summary"]) >= {"min", "max", "mean", "quantiles"}
    png = (out / "score_histogram.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    # --fraction: floor(F * n)
    assert cli.main(["--scores", str(run / "scores"), "--strategy", "topk", "--fraction", "0.1",
                     "--out", str(tmp_path / "top"), "--no-plot"]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "top" / "coreset.npy"),
                                  ref_topk(idx, score, 120))


def test_cli_help_explains_every_flag(capsys):
    cli = _cli()
    with pytest.raises(SystemExit) as e:
        cli.parse_args(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--scores", "--strategy", "--budget", "--fraction", "--hard-cutoff", "--strata",
                 "--seed", "--out", "--data", "--molecule", "--column", "--id-column",
                 "--corpus-cache", "--no-validate", "--hist-bins", "--no-plot", "--local_rank"):
        assert flag in text, flag


def _cli_error(argv, capsys):
    cli = _cli()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_cli_bad_inputs(tmp_path, capsys):
    idx, score = tie_heavy(50)
    base = ["--strategy", "topk", "--budget", "5", "--out", str(tmp_path / "o")]
    # unfinished: parts but no _SUCCESS
    d = write_scores(tmp_path / "a", idx, score, [20, 30], success=False)
    msg = _cli_error(["--scores", str(d)] + base, capsys)
    assert msg == (f"error: scoring did not finish: no _SUCCESS in {d}; "
                   "rerun launch/score.py with the same --out to resume")
    # empty directory
    (tmp_path / "e").mkdir()
    assert "no _SUCCESS" in _cli_error(["--scores", str(tmp_path / "e")] + base, capsys)
    assert "does not exist" in _cli_error(["--scores", str(tmp_path / "zz")] + base, capsys)
    # NaN / inf
    bad = score.copy()
    bad[[3, 40]] = [np.nan, np.inf]
    d = write_scores(tmp_path / "b", idx, bad, [25, 25])
    assert _cli_error(["--scores", str(d)] + base, capsys) == (
        f"error: 2 score(s) are NaN or infinite; first corpus indices: "
        f"{sorted([int(idx[3]), int(idx[40])])}")
    # an index repeated across parts (and so one missing)
    rep = idx.copy()
    rep[30] = rep[2]
    d = write_scores(tmp_path / "c", rep, score, [25, 25])
    msg = _cli_error(["--scores", str(d)] + base, capsys)
    assert f"repeat an index (first repeated: [{idx[2]}])" in msg
    assert f"missing (first: [{idx[30]}])" in msg
    # budget out of range
    d = write_scores(tmp_path / "d", idx, score, [50])
    msg = _cli_error(["--scores", str(d), "--strategy", "cci", "--budget", "49",
                      "--out", str(tmp_path / "o")], capsys)
    assert "budget 49 is out of range: allowed 1..48" in msg
    msg = _cli_error(["--scores", str(d), "--strategy", "random", "--fraction", "0.001",
                      "--out", str(tmp_path / "o")], capsys)
    assert msg.startswith("error: --fraction 0.001 of n = 50") and "--fraction >= 0.02" in msg
    assert not (tmp_path / "o").exists()


def _fasta(path, n):
    """Records with descriptions, lower-case residues and T (the corpus stores ACGU)."""
    path.write_text("".join(f">seq{i} sample {i} of the corpus\n{'ACGTacgu'[i % 8] * (3 + i % 5)}\n"
                            for i in range(n)))
    return path


def test_cli_fasta(run_dir, tmp_path, capsys):
    run, idx, score = run_dir
    cli = _cli()
    fa = _fasta(tmp_path / "corpus.fasta", 1200)
    out = tmp_path / "sel"
    assert cli.main(["--scores", str(run / "scores"), "--strategy", "topk", "--budget", "7",
                     "--out", str(out), "--data", str(fa), "--no-plot"]) == 0
    core = np.load(out / "coreset.npy")
    # the input's records byte for byte: header line (id and description) and residues as given
    records = [">" + r for r in fa.read_text().split(">")[1:]]
    assert (out / "coreset.fasta").read_text() == "".join(records[i] for i in core)
    from Bio import SeqIO

    src = list(SeqIO.parse(fa, "fasta"))
    got = list(SeqIO.parse(out / "coreset.fasta", "fasta"))
    assert [(r.description, str(r.seq)) for r in got] == \
        [(src[i].description, str(src[i].seq)) for i in core]
    assert (out / "corpus" ).is_dir()                  # no manifest: cache under --out
    # the manifest next to the scores names the corpus: --data with no paths
    (run / "manifest.json").write_text(json.dumps({"corpus": {
        "paths": [str(fa)], "molecule": "rna", "column": "sequence",
        "cache_dir": str(tmp_path / "cache")}}))
    out2 = tmp_path / "sel2"
    assert cli.main(["--scores", str(run / "scores"), "--strategy", "topk", "--budget", "7",
                     "--out", str(out2), "--data", "--no-plot"]) == 0
    assert (out2 / "coreset.fasta").read_text() == (out / "coreset.fasta").read_text()
    assert (tmp_path / "cache").is_dir()
    # a corpus of another size is not the scored one
    small = _fasta(tmp_path / "small.fasta", 1000)
    msg = _cli_error(["--scores", str(run / "scores"), "--strategy", "topk", "--budget", "7",
                      "--out", str(tmp_path / "sel3"), "--data", str(small)], capsys)
    assert "has 1,000 records but the scores have n = 1,200" in msg
    # the same records in another order: same count, other corpus positions -> refused
    from bioprune.engine.data.corpus import load_corpus

    digest = load_corpus([str(fa)], "rna", tmp_path / "cache").content_digest()
    (run / "manifest.json").write_text(json.dumps({"corpus": {
        "paths": [str(fa)], "molecule": "rna", "column": "sequence",
        "cache_dir": str(tmp_path / "cache"), "content_digest": digest}}))
    records = fa.read_text().split(">")[1:]
    shuffled = tmp_path / "shuffled.fasta"
    shuffled.write_text("".join(">" + r for r in records[1:] + records[:1]))
    msg = _cli_error(["--scores", str(run / "scores"), "--strategy", "topk", "--budget", "7",
                      "--out", str(tmp_path / "sel4"), "--data", str(shuffled)], capsys)
    assert "not its sequences in the same order" in msg and digest in msg
    assert not (tmp_path / "sel4" / "coreset.fasta").exists()
    # the scored corpus itself still passes, its digest read back from the cache's sidecar
    assert cli.main(["--scores", str(run / "scores"), "--strategy", "topk", "--budget", "7",
                     "--out", str(tmp_path / "sel5"), "--data", str(fa), "--no-plot"]) == 0


def test_select_from_scores(run_dir):
    from bioprune.engine.selection.pipeline import select_from_scores

    run, idx, score = run_dir
    r = select_from_scores(run / "scores", "random", fraction=0.25, seed=4)
    np.testing.assert_array_equal(r.indices, ref_select(idx, score, "random", 300, seed=4))
    with pytest.raises(SelectionError, match="exactly one"):
        select_from_scores(run / "scores", "topk")


def test_cli_coreset_table_keys_the_coreset_by_id(run_dir, tmp_path):
    """coreset.tsv beside coreset.fasta: index, record id, score, CCI stratum per coreset record;
    the scores are the scored values and the strata the brute-force reference's (per stratum,
    as many rows as its budget)."""
    import pandas as pd

    run, idx, score = run_dir
    fa = _fasta(tmp_path / "corpus.fasta", 1200)
    out = tmp_path / "sel"
    assert _cli().main(["--scores", str(run / "scores"), "--strategy", "cci", "--budget", "100",
                        "--strata", "10", "--seed", "3", "--out", str(out), "--data", str(fa),
                        "--no-plot"]) == 0
    t = pd.read_csv(out / "coreset.tsv", sep="\t")
    core = np.load(out / "coreset.npy")
    assert list(t.columns) == ["index", "id", "score", "stratum"]
    np.testing.assert_array_equal(t["index"].to_numpy(), core)
    assert t["id"].tolist() == [f"seq{i}" for i in core]
    by_index = np.empty(len(idx))
    by_index[idx] = score
    np.testing.assert_array_equal(t["score"].to_numpy(), by_index[core])
    _, det = ref_cci(idx, score, 100, 0.05, 10, 3)
    counts = np.bincount(t["stratum"].to_numpy(), minlength=10)
    assert counts.tolist() == det["budgets"]
    rep = json.loads((out / "selection.json").read_text())
    assert rep["table"] == "coreset.tsv"
    # Random uses no score: the columns stay, empty
    out2 = tmp_path / "rnd"
    assert _cli().main(["--scores", str(run / "scores"), "--strategy", "random", "--budget", "5",
                        "--out", str(out2), "--data", str(fa), "--no-plot"]) == 0
    t2 = pd.read_csv(out2 / "coreset.tsv", sep="\t")
    assert len(t2) == 5 and t2["score"].isna().all() and t2["stratum"].isna().all()


def test_cli_prints_a_summary_that_warns_when_scores_rank_by_length(run_dir, tmp_path, capsys):
    """The closing summary: n selected / N, budget, CCI's cut-off and picks per stratum, the
    coreset's score range against the corpus's, and Spearman(score, length) from the scoring
    run's manifest with the scoring summary's warning above |0.5|."""
    run, idx, score = run_dir
    (run / "manifest.json").write_text(json.dumps({"length_spearman": -0.8}))
    argv = ["--scores", str(run), "--strategy", "cci", "--budget", "100", "--strata", "10",
            "--seed", "3", "--no-plot"]
    assert _cli().main([*argv, "--out", str(tmp_path / "cci")]) == 0
    out = capsys.readouterr().out
    _, det = ref_cci(idx, score, 100, 0.05, 10, 3)
    assert "cci: 100 of 1,200 selected (8.33%), budget 100" in out
    assert "hard cut-off 0.05: the 60 highest scores dropped" in out
    cells = " ".join(f"{p}/{s}" for p, s in zip(det["picks"], det["sizes"]))
    assert f"    0-9   {cells}\n" in out
    core = score[np.isin(idx, np.load(tmp_path / "cci" / "coreset.npy"))]
    assert (f"scores: coreset {core.min():.4g} .. {core.max():.4g} (mean {core.mean():.4g}); "
            f"corpus {score.min():.4g} .. {score.max():.4g}") in out
    assert "Spearman(score, length) = -0.80" in out
    assert "warning: the score ranks largely by length (Spearman -0.80)" in out
    assert "--strategy random" in out
    # a weak length correlation: said, no warning; none known (no manifest, constant lengths
    # in the plot): no line
    (run / "manifest.json").write_text(json.dumps({"length_spearman": 0.1}))
    assert _cli().main([*argv, "--out", str(tmp_path / "cci2")]) == 0
    out = capsys.readouterr().out
    assert "Spearman(score, length) = +0.10" in out and "warning" not in out
    (run / "manifest.json").unlink()
    assert _cli().main(["--scores", str(run), "--strategy", "topk", "--budget", "7",
                        "--out", str(tmp_path / "top")]) == 0
    out = capsys.readouterr().out
    assert "topk: 7 of 1,200 selected (0.58%)" in out and "Spearman" not in out
    assert "picks per stratum" not in out
