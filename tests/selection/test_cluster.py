"""MMseqs2 cluster-representative selection against the real binary, on real sample sequences."""
from __future__ import annotations

import numpy as np
import pytest

from bioprune.engine.data.corpus import load_corpus
from bioprune.engine.runtime.hashing import SELECT, hash_keys
from bioprune.engine.selection.cluster import (cluster_order, mmseqs_clusters,
                                               select_from_clusters)
from pipeline_utils import data_dir


def _fasta(tmp_path, n_per=60):
    out = []
    for name in ("rfam_RF00005.fasta", "rfam_RF00001.fasta", "rnacentral_sample.fasta"):
        recs = 0
        for line in (data_dir() / "rna" / name).read_text().splitlines():
            if line.startswith(">"):
                recs += 1
                if recs > n_per:
                    break
            out.append(line)
    p = tmp_path / "small.fasta"
    p.write_text("\n".join(out) + "\n")
    return load_corpus([str(p)], "rna", tmp_path / "cache")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return _fasta(tmp_path_factory.mktemp("cluster"))


@pytest.fixture(scope="module")
def clustered(corpus):
    """(rep, info) of one real MMseqs2 run (each run costs ~20 s of start-up here)."""
    return mmseqs_clusters(corpus, identity=0.5, coverage=0.8)


@pytest.mark.slow
@pytest.mark.subprocess
def test_real_mmseqs_clusters_are_deterministic_and_complete(corpus, clustered):
    rep1, info = clustered
    rep2, _ = mmseqs_clusters(corpus, identity=0.5, coverage=0.8)
    n = len(corpus)
    assert (rep1 == rep2).all()
    assert rep1.shape == (n,) and rep1.min() >= 0 and rep1.max() < n
    assert (rep1[rep1] == rep1).all()                 # a representative represents itself
    # homologous families collapse: far fewer clusters than sequences, but more than one
    assert 1 < info["clusters"] < n
    assert info["mmseqs_version"] and "easy-cluster" in info["command"][1]
    # a stricter identity threshold never gives fewer clusters
    strict, strict_info = mmseqs_clusters(corpus, identity=0.95, coverage=0.8)
    assert strict_info["clusters"] >= info["clusters"]
    idx, report = select_from_clusters(strict, 10, seed=1, info=strict_info)
    assert report["clusters"] == strict_info["clusters"] and len(idx) == 10


@pytest.mark.parametrize("frac", [0.05, 0.3, 0.9, 1.0])
@pytest.mark.slow
@pytest.mark.subprocess
def test_budget_exact_reps_first(corpus, clustered, frac):
    n = len(corpus)
    b = max(1, int(frac * n))
    rep, info = clustered
    idx, report = select_from_clusters(rep, b, seed=3, info=info)
    assert len(idx) == b and len(np.unique(idx)) == b and (np.diff(idx) > 0).all()
    assert idx.dtype == np.int64
    k = report["clusters"]
    reps_taken = int((rep[idx] == idx).sum())
    assert reps_taken == min(b, k)                    # representatives before any second member
    assert report["selected"] == b
    again, _ = select_from_clusters(rep, b, seed=3)
    assert (again == idx).all()
    if b < n:
        other, _ = select_from_clusters(rep, b, seed=4)   # the seed only breaks ties
        assert len(other) == b


def test_order_rule_on_a_known_table():
    # clusters: {0,1,2} (rep 0), {3,4} (rep 4), {5} (rep 5)
    rep = np.array([0, 0, 0, 4, 4, 5])
    for seed in range(4):
        order = cluster_order(rep, seed=seed)
        assert sorted(order.tolist()) == list(range(6))
        reps = np.array([0, 4, 5])
        want_round1 = reps[np.argsort(hash_keys(seed, reps, SELECT), kind="stable")]
        assert order[:3].tolist() == want_round1.tolist()      # every rep, in hashed order
        second = {0: 1 if hash_keys(seed, np.array([1]), SELECT)[0]
                  < hash_keys(seed, np.array([2]), SELECT)[0] else 2, 4: 3}
        assert set(order[3:5].tolist()) == set(second.values())  # then one more per cluster
        assert order[5] == ({1, 2} - {second[0]}).pop()         # the big cluster's third
    idx, rpt = select_from_clusters(rep, 3, seed=0)
    assert idx.tolist() == [0, 4, 5] and rpt["representatives_selected"] == 3
    with pytest.raises(ValueError):
        select_from_clusters(rep, 7)
    with pytest.raises(ValueError):
        select_from_clusters(rep, 0)


def test_clusters_are_drawn_uniformly_not_by_size():
    """With a budget below the number of clusters, a huge cluster is no likelier to be picked
    than a singleton (preferring large clusters would keep exactly the redundancy the baseline
    should thin out)."""
    big = 60
    rep = np.r_[np.zeros(big, np.int64), np.arange(big, big + 9)]   # 1 cluster of 60 + 9 singles
    picks_big = sum(int(select_from_clusters(rep, 1, seed=s)[0][0] == 0) for s in range(1000))
    assert 60 <= picks_big <= 140        # 1/10 of 1000 draws, binomial sd ~9.5


@pytest.mark.slow
@pytest.mark.subprocess
def test_select_launcher_cluster_strategy_matches_the_function(tmp_path, corpus, clustered):
    """``select_coreset.py --strategy cluster`` on a (real-format) scores directory of the same
    corpus gives the coreset of ``select_from_clusters`` on the same MMseqs2 table."""
    import json

    from bioprune.engine.io import scores as S
    from pipeline_utils import run

    n = len(corpus)
    S.write_part(tmp_path / "scores", 0, index=np.arange(n), score=np.linspace(1, 2, n),
                 length=corpus.lengths, loss=np.ones(n, np.float32))
    S.write_success(tmp_path / "scores", n)
    run("select_coreset.py", ["--scores", str(tmp_path / "scores"), "--strategy", "cluster",
                              "--budget", "25", "--seed", "4", "--data", *corpus.paths,
                              "--out", str(tmp_path / "sel")])
    got = np.load(tmp_path / "sel" / "coreset.npy")
    rep, _ = clustered
    want, _ = select_from_clusters(rep, 25, seed=4)
    np.testing.assert_array_equal(got, want)
    report = json.loads((tmp_path / "sel" / "selection.json").read_text())
    assert report["strategy"] == "cluster" and report["selected"] == 25
    assert (tmp_path / "sel" / "coreset.fasta").read_text().count(">") == 25


@pytest.mark.parametrize("strategy", ["cci", "topk", "random"])
def test_selection_among_representatives_matches_brute_force(strategy):
    """Dedup, then select: only cluster representatives, one per cluster, and exactly the
    brute-force selection over the representatives' scores (positions among them as indices)."""
    from test_selection_reference import ref_select

    from bioprune.engine.selection.cluster import select_among_representatives

    rng = np.random.default_rng(7)
    n = 3000
    rep = np.arange(n)
    rep[1500:] = rng.integers(0, 300, n - 1500)       # half the corpus: copies of 300 parents
    score = rng.gamma(2.0, 1.0, n)
    perm = rng.permutation(n)                          # scores in part order, not index order
    idx, report = select_among_representatives(rep, perm, score[perm], strategy, 200, seed=3,
                                               strata=20)
    reps = np.flatnonzero(rep == np.arange(n))
    assert len(reps) == 1500 and report["representatives"] == 1500
    want = np.sort(reps[ref_select(np.arange(len(reps)), score[reps], strategy, 200, 0.05, 20, 3)])
    np.testing.assert_array_equal(idx, want)
    assert (rep[idx] == idx).all() and len(np.unique(rep[idx])) == 200
    with pytest.raises(ValueError, match="exactly once"):
        select_among_representatives(rep, perm[:-1], score[perm][:-1], strategy, 200)


def _scores_run(tmp_path, corpus, name="scores"):
    from bioprune.engine.io import scores as S

    n = len(corpus)
    rng = np.random.default_rng(5)
    S.write_part(tmp_path / name, 0, index=np.arange(n), score=rng.gamma(2.0, 1.0, n),
                 length=corpus.lengths, loss=np.ones(n, np.float32))
    S.write_success(tmp_path / name, n)
    return tmp_path / name


@pytest.mark.slow
@pytest.mark.subprocess
def test_cluster_table_round_trip_and_reuse(tmp_path, corpus, clustered):
    """The table a cluster selection leaves (clusters.tsv, by record id) reads back to the same
    clusters, and --clusters reuses it: the same coreset without running MMseqs2."""
    import json

    from bioprune.engine.selection.cluster_table import read_cluster_table, write_cluster_table
    from pipeline_utils import run

    rep, _ = clustered
    write_cluster_table(tmp_path / "t.tsv", rep, corpus)
    np.testing.assert_array_equal(read_cluster_table(tmp_path / "t.tsv", corpus), rep)
    scores = _scores_run(tmp_path, corpus)
    run("select_coreset.py", ["--scores", str(scores), "--strategy", "cluster", "--budget", "30",
                              "--seed", "2", "--data", *corpus.paths, "--clusters",
                              str(tmp_path / "t.tsv"), "--out", str(tmp_path / "sel")])
    got = np.load(tmp_path / "sel" / "coreset.npy")
    np.testing.assert_array_equal(got, select_from_clusters(rep, 30, seed=2)[0])
    report = json.loads((tmp_path / "sel" / "selection.json").read_text())
    assert report["table"].endswith("t.tsv") and "command" not in report   # no MMseqs2 run
    np.testing.assert_array_equal(
        read_cluster_table(tmp_path / "sel" / "clusters.tsv", corpus), rep)


@pytest.mark.slow
@pytest.mark.multirank
@pytest.mark.subprocess
def test_dedup_selection_matches_the_in_process_one_on_1_and_2_ranks(tmp_path, corpus,
                                                                       clustered):
    from bioprune.engine.io.scores import read_scores
    from bioprune.engine.selection.cluster import select_among_representatives
    from bioprune.engine.selection.cluster_table import write_cluster_table
    from pipeline_utils import run

    rep, _ = clustered
    write_cluster_table(tmp_path / "t.tsv", rep, corpus)
    scores = _scores_run(tmp_path, corpus)
    d = read_scores(scores, columns=("index", "score"))
    want, _ = select_among_representatives(rep, d["index"], d["score"], "cci", 25, seed=1,
                                           strata=5)
    for ranks in (1, 2):
        out = tmp_path / f"dedup{ranks}"
        run("select_coreset.py", ["--scores", str(scores), "--strategy", "cci", "--budget", "25",
                                  "--strata", "5", "--seed", "1", "--dedup", "--clusters",
                                  str(tmp_path / "t.tsv"), "--data", *corpus.paths,
                                  "--out", str(out)], ranks=ranks)
        np.testing.assert_array_equal(np.load(out / "coreset.npy"), want)
        assert (out / "clusters.tsv").exists() and (out / "coreset.tsv").exists()
    assert len(np.unique(rep[want])) == 25 and (rep[want] == want).all()


def test_bad_cluster_tables_are_one_line(tmp_path, corpus):
    from bioprune.engine.runtime.errors import UsageError
    from bioprune.engine.selection.cluster_table import read_cluster_table

    ids = [corpus.record_id(i) for i in range(len(corpus))]
    cases = {
        "missing": ("\n".join(f"{i}\t{i}" for i in ids[1:]), "1 records of the corpus are in no"),
        "unknown": (f"{ids[0]}\tnot_a_record\n", "'not_a_record' is not in the corpus"),
        "twice": ("\n".join([f"{i}\t{i}" for i in ids] + [f"{ids[1]}\t{ids[0]}"]),
                  "is a member of two clusters"),
        "columns": ("just_one_column\n", "expected representative<TAB>member"),
    }
    for name, (text, msg) in cases.items():
        p = tmp_path / f"{name}.tsv"
        p.write_text(text + "\n")
        with pytest.raises(UsageError, match=msg.replace("(", r"\(")):
            read_cluster_table(p, corpus)
