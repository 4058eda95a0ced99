"""Record ids → corpus positions, for every list that names records by id (``--indices`` as a
text list, ``--clusters`` tables): such lists survive a re-ordered or re-exported corpus, where
positions do not. One pass over the corpus's ids; repeats are reported, not silently collapsed.
"""
from __future__ import annotations

import numpy as np

from bioprune.engine.runtime.errors import fail


def positions_by_id(corpus) -> tuple[dict[str, int], dict[str, tuple[int, int]]]:
    """({record id: its corpus position}, {repeated id: (first, last) positions}); a repeated id
    maps to its last record."""
    where: dict[str, int] = {}
    repeated: dict[str, tuple[int, int]] = {}
    for i in range(len(corpus)):
        rid = corpus.record_id(i)
        if rid in where:
            repeated.setdefault(rid, (where[rid], i))
        where[rid] = i
    return where, repeated


def ids_to_indices(ids: list[str], corpus, path) -> np.ndarray:
    """Corpus indices of ``--indices`` record ``ids`` (each present and naming one record)."""
    where, repeated = positions_by_id(corpus)
    named = [i for i in ids if i in repeated]
    if named:
        fail(f"--indices {path}: the corpus repeats the record id {named[0]!r}, so an id list "
             "cannot name one record; pass corpus indices (coreset.npy) instead")
    missing = [i for i in ids if i not in where]
    if missing:
        fail(f"--indices {path}: {len(missing):,} record ids are not in --data (first: "
             f"{missing[:3]}); was the list made from the same corpus?")
    return np.asarray([where[i] for i in ids], dtype=np.int64)
