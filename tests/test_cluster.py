"""MMseqs2 cluster-representative selection against the real binary, on real sample sequences."""
from __future__ import annotations

import numpy as np
import pytest

from bioprune.engine.data.corpus import load_corpus
from bioprune.engine.selection.cluster import (cluster_order, mmseqs_clusters, select_cluster,
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
    # a stricter identity threshold never gives fewer clusters; the end-to-end call agrees
    idx, report = select_cluster(corpus, 10, identity=0.95, coverage=0.8, seed=1)
    assert report["clusters"] >= info["clusters"] and len(idx) == 10


@pytest.mark.parametrize("frac", [0.05, 0.3, 0.9, 1.0])
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
    order = cluster_order(rep, seed=0)
    assert sorted(order.tolist()) == list(range(6))
    assert order[0] == 0 and order[1] == 4           # largest cluster's rep first, then next
    assert order[2] == 5                              # every rep before any second member
    assert set(order[3:5].tolist()) == {1, 3}         # second members, largest cluster first
    assert order[3] == 1 and order[5] == 2
    idx, rpt = select_from_clusters(rep, 3, seed=0)
    assert idx.tolist() == [0, 4, 5] and rpt["representatives_selected"] == 3
    with pytest.raises(ValueError):
        select_from_clusters(rep, 7)
    with pytest.raises(ValueError):
        select_from_clusters(rep, 0)


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
