"""Cluster tables as files: the two-column ``representative<TAB>member`` TSV by record id that
MMseqs2 writes (``*_cluster.tsv``), that UniRef / Rfam memberships convert to, and that
``select_coreset.py --strategy cluster`` leaves in its output (``clusters.tsv``) so a later
selection reuses it (``--clusters FILE``) instead of clustering again.

In memory a table is ``rep``: ``rep[i]`` = the corpus index of record i's representative
(:mod:`.cluster`). Reading maps ids to corpus positions, so the corpus's ids must be unique;
every record must be a member of exactly one cluster, and every representative a member of its
own. Each problem is one error naming the file, the line and what to do.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bioprune.engine.data.record_ids import positions_by_id
from bioprune.engine.io.atomic import write_text
from bioprune.engine.runtime.errors import UsageError

__all__ = ["read_cluster_table", "write_cluster_table", "representatives_only"]

TABLE = "clusters.tsv"


def _id_index(corpus) -> dict[str, int]:
    ids, repeated = positions_by_id(corpus)
    if repeated:
        rid, (a, b) = next(iter(repeated.items()))
        raise UsageError(f"the corpus repeats the record id {rid!r} (records {a + 1} and {b + 1}): "
                         "a cluster table by id cannot name them apart; give the records unique "
                         "ids")
    return ids


def read_cluster_table(path, corpus) -> np.ndarray:
    """``rep`` from a representative/member TSV by record id (extra columns ignored; a header
    line ``representative<TAB>member`` is skipped)."""
    path = Path(path)
    ids = _id_index(corpus)
    n = len(corpus)
    rep = np.full(n, -1, dtype=np.int64)
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise UsageError(f"--clusters {path}: cannot read ({e})") from None
    for k, line in enumerate(lines, 1):
        if not line.strip() or (k == 1 and line.lower().startswith("representative")):
            continue
        cols = line.split("\t")
        if len(cols) < 2:
            raise UsageError(f"--clusters {path}, line {k}: expected representative<TAB>member, "
                             f"got {line[:80]!r}")
        a, b = cols[0].strip(), cols[1].strip()
        if a not in ids or b not in ids:
            miss = a if a not in ids else b
            raise UsageError(f"--clusters {path}, line {k}: record id {miss!r} is not in the "
                             "corpus; the table must cluster exactly the scored corpus")
        if rep[ids[b]] >= 0 and rep[ids[b]] != ids[a]:
            raise UsageError(f"--clusters {path}, line {k}: {b!r} is a member of two clusters")
        rep[ids[b]] = ids[a]
    missing = np.flatnonzero(rep < 0)
    if len(missing):
        raise UsageError(f"--clusters {path}: {len(missing):,} records of the corpus are in no "
                         f"cluster (first: {corpus.record_id(int(missing[0]))!r}); every record "
                         "must be a member (a singleton is its own representative)")
    heads = np.unique(rep)
    if (rep[heads] != heads).any():
        bad = int(heads[rep[heads] != heads][0])
        raise UsageError(f"--clusters {path}: representative {corpus.record_id(bad)!r} is not "
                         "a member of its own cluster")
    return rep


def write_cluster_table(path, rep: np.ndarray, corpus) -> None:
    """``rep`` as representative<TAB>member lines by record id, grouped by cluster."""
    rep = np.asarray(rep, dtype=np.int64)
    order = np.lexsort((np.arange(len(rep)), rep))
    lines = ["representative\tmember"]
    lines += [f"{corpus.record_id(int(rep[i]))}\t{corpus.record_id(int(i))}" for i in order]
    write_text(path, "\n".join(lines) + "\n")


def representatives_only(rep: np.ndarray, index: np.ndarray, score: np.ndarray):
    """The rows (``index``, ``score``) of cluster representatives, their index replaced by the
    position among the representatives (ascending corpus index), so the exact selection runs
    over 0..m-1; returns (positions, scores, reps) with ``reps[position]`` = corpus index."""
    rep = np.asarray(rep, dtype=np.int64)
    is_rep = rep == np.arange(len(rep))
    reps = np.flatnonzero(is_rep)
    position = np.cumsum(is_rep) - 1
    index = np.asarray(index, dtype=np.int64)
    keep = is_rep[index]
    return position[index[keep]], np.asarray(score)[keep], reps
