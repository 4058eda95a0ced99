"""The exchange's merge: every rank walks all unit summaries in corpus order exactly as one
process would walk its inputs, reaching the same errors in the same order, else the same
statistics and every unit's place in the corpus (index, residue and id offsets).

Record numbers within a file are 1-based and count the rejected records; a unit whose first
record number is only known after the exchange (a FASTA range not at the file start) kept its
numbers local until here."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bioprune.engine.data.alphabets import Alphabet
from bioprune.engine.data.corpus.invalid import (MAX_LISTED, check_file, raise_listed,
                                                 too_many_invalid)
from bioprune.engine.data.corpus.scan import UnitSummary
from bioprune.engine.data.corpus.stats import corpus_meta, file_meta
from bioprune.engine.data.corpus.units import Unit
from bioprune.engine.data.readers import CorpusError, InputSpec


@dataclass
class Merged:
    """The corpus as the merge sees it: ``meta`` (corpus.json less "build"), and per unit its
    first record number in its file (0-based), corpus index, residue offset and id offset."""

    meta: dict
    file_base: np.ndarray
    index: np.ndarray
    residue: np.ndarray
    id_offset: np.ndarray
    n_rejected: int


def _rebase(err: BaseException, base: int) -> BaseException:
    """A read error of a unit counted from its first record, counted from the file's."""
    if not base or getattr(err, "unnumbered", None) is None:
        return err
    return CorpusError(f"{err.unnumbered} after record {base + err.records_read}", path=err.path,
                       hint=err.hint)


def merge_units(units: list[Unit], summaries: list[UnitSummary | None], specs: list[InputSpec],
                identity: dict, alpha: Alphabet, column: str, id_column, on_invalid: str,
                hist: np.ndarray, generated: np.ndarray | None = None) -> Merged:
    """Walk the units in corpus order exactly as one process reading every input whole would:
    the same errors in the same order whatever the units and ranks (the first MAX_LISTED bad
    records, a read error, an empty or all-bad input, the listed bad records at the end), else
    the statistics and every unit's offsets. ``summaries[u]`` is None for a unit its rank never
    reached (it stopped at an earlier error, which the walk meets first). ``generated``: id
    bytes per unit of the ids generated after the exchange."""
    nu = len(units)
    file_base = np.zeros(nu, np.int64)
    index = np.zeros(nu + 1, np.int64)
    residue = np.zeros(nu + 1, np.int64)
    id_offset = np.zeros(nu + 1, np.int64)
    listed: list[dict] = []          # the first MAX_LISTED bad records of the corpus
    nrej_total = 0
    files_meta = []
    counts = np.zeros(256, np.int64)
    stops = 0
    by_file: dict[int, list[Unit]] = {}
    for u in units:
        by_file.setdefault(u.file, []).append(u)
    n = nres = nid = 0
    for k, (spec, ident) in enumerate(zip(specs, identity["inputs"])):
        first_index, seen, nrej, fres, fstops = n, 0, 0, 0, 0
        fcounts = np.zeros(256, np.int64)
        first_rej = None
        for u in by_file[k]:
            s = summaries[u.index]
            if s is None:
                raise RuntimeError(f"corpus build: unit {u.index} was not scanned")
            if u.record_base is not None and u.record_base != seen:
                raise RuntimeError(f"corpus build: unit {u.index} starts at record "
                                   f"{u.record_base}, the units before it hold {seen}")
            file_base[u.index], index[u.index], residue[u.index], id_offset[u.index] = (
                seen, n, nres, nid)
            rows = [{"file": spec.display, "record": seen + r, "id": rid, "reason": why,
                     "hint": hint} for r, rid, why, hint in s.listed]
            if rows and first_rej is None:
                first_rej = rows[0]
            listed += rows[:max(0, MAX_LISTED - len(listed))]
            nrej_total += s.rejected
            if on_invalid == "error" and nrej_total >= MAX_LISTED:
                raise too_many_invalid(listed[:MAX_LISTED], MAX_LISTED, complete=False)
            if s.error is not None:
                raise _rebase(s.error, seen)
            if not s.done:
                raise RuntimeError(f"corpus build: unit {u.index} was not finished")
            seen += s.seen
            nrej += s.rejected
            n += s.kept
            nres += s.residues
            fres += s.residues
            nid += s.id_bytes + (int(generated[u.index]) if generated is not None else 0)
            fcounts += s.counts
            fstops += s.stops
        check_file(spec, seen, nrej, on_invalid, first_rej)
        counts += fcounts
        stops += fstops
        files_meta.append(file_meta(ident, spec, alpha, on_invalid, first_index, seen - nrej,
                                     fres, nrej, fcounts, fstops))
    raise_listed(listed, on_invalid)
    index[nu], residue[nu], id_offset[nu] = n, nres, nid
    meta = corpus_meta(alpha, column, id_column, on_invalid, files_meta, n, nres, nid, hist,
                        counts, stops, nrej_total)
    return Merged(meta, file_base, index, residue, id_offset, nrej_total)
