"""Opening a corpus: the cache reused when it was built from the same inputs, else built by
every rank (:mod:`.build`) and then opened by each; plus the warnings about inputs given twice
and repeated record ids."""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from bioprune.engine.data.corpus.build import build_corpus
from bioprune.engine.data.corpus.identity import check_matches
from bioprune.engine.data.corpus.store import Corpus


def load_corpus(paths, molecule: str, cache_dir, column: str = "sequence",
                id_column: str | None = None, on_invalid: str = "error", *,
                node_local: bool = False, build: dict | None = None) -> Corpus:
    """Open the corpus cached in ``cache_dir`` if it was built from the same inputs (paths,
    sizes, mtimes, molecule, column, id column); otherwise build it, then every rank opens it.

    Every rank builds its share of the inputs (:mod:`.build`; one process is the one-rank
    case): at 10^9 records one core would need a quarter of an hour while the other ranks idle.
    ``cache_dir`` must then be one directory that every rank sees (a shared filesystem) —
    unless ``node_local``: then ``cache_dir`` is a path on each node's own disk and every node
    ends up with a complete copy there (the ranks still build together; the nodes exchange what
    they built over the process group). The inputs must be readable at the same paths from
    every rank in both cases.

    ``build`` tunes the build (tests, benchmarks): ``min_unit_bytes``, ``units_per_rank``,
    ``chunk_bytes``, ``batch_rows`` (see :func:`.build.build_corpus`).

    A cache built from different inputs is an error (never silently reused)."""
    root = build_corpus(paths, molecule, Path(cache_dir).absolute(), column, id_column,
                        on_invalid, node_local=node_local, **(build or {}))
    corpus = Corpus.open(root)
    check_matches(corpus.stats, paths, molecule, root, column, id_column, on_invalid)
    warn_repeats(corpus, paths)
    return corpus


def warn_repeats(corpus: Corpus, paths) -> None:
    """One warning line (main rank) for an input given twice and for repeated record ids: the
    corpus keeps every record (positions stay valid), but an id then names several records, and
    a file given twice doubles its weight, which is rarely meant."""
    # imported here: opening a corpus module must not pull in torch (launchers check their
    # arguments before the slow imports)
    from bioprune.engine.runtime import distributed

    if not distributed.is_main():
        return
    mentions = Counter(str(Path(p).absolute()) for p in paths)
    twice = {p: k for p, k in mentions.items() if k > 1}
    if twice:
        first, k = next(iter(twice.items()))
        print(f"warning: the input {first} is given {k} times ({len(twice)} input(s) repeated): "
              "its records enter the corpus once per mention", file=sys.stderr, flush=True)
    rep = corpus.repeated_ids()
    if rep["records"]:
        print(f"warning: {rep['records']:,} record(s) repeat an id seen earlier in the corpus "
              f"(for example {rep['example']!r}); every record is kept, so an id may name "
              "several records: use corpus indices (coreset.npy) to refer to records",
              file=sys.stderr, flush=True)
