"""One rank's scan: its units read in order, every batch validated and normalised, the kept
records appended to a shard (the arrays of a corpus, offsets from 0; memory: one read chunk,
whatever the shard's size), and a small summary per unit for the exchange."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bioprune.engine.data.alphabets import Alphabet
from bioprune.engine.data.corpus.generated_ids import DEFERRED, deferred_ids, fill_ids
from bioprune.engine.data.corpus.invalid import MAX_LISTED, tsv_field
from bioprune.engine.data.corpus.layout import ARRAYS
from bioprune.engine.data.corpus.normalise import clean_batch
from bioprune.engine.data.corpus.stats import add_hist
from bioprune.engine.data.corpus.units import Unit
from bioprune.engine.data.read_input import iter_batches
from bioprune.engine.data.readers import CorpusError, InputSpec

REJECTED_PART = "rejected.part"   # in a shard: (unit, record number in the unit, id, reason)


class ShardWriter:
    """Appends batches to the arrays of a shard (offsets from the shard's start; with one rank
    the shard is the corpus)."""

    def __init__(self, root: Path):
        self.f = {k: open(root / fn, "wb") for k, (fn, _) in ARRAYS.items()}
        self.n = 0
        self.nres = 0
        self.nid = 0
        self.f["offsets"].write(np.zeros(1, "<i8").tobytes())
        self.f["id_offsets"].write(np.zeros(1, "<i8").tobytes())

    def add(self, residues, offsets, ids, id_offsets):
        lengths = np.diff(offsets)
        self.f["residues"].write(memoryview(np.ascontiguousarray(residues)))
        self.f["offsets"].write((offsets[1:] + self.nres).astype("<i8").tobytes())
        self.f["lengths"].write(lengths.astype("<i4").tobytes())
        self.f["ids"].write(memoryview(np.ascontiguousarray(ids)))
        self.f["id_offsets"].write((id_offsets[1:] + self.nid).astype("<i8").tobytes())
        self.n += len(lengths)
        self.nres += int(offsets[-1])
        self.nid += int(id_offsets[-1])

    def close(self, sync: bool = True):
        for f in self.f.values():
            f.flush()
            if sync:
                os.fsync(f.fileno())
            f.close()


@dataclass
class UnitSummary:
    """What a rank tells the others about one unit it scanned."""

    unit: int
    seen: int = 0            # records read, bad ones included
    kept: int = 0
    rejected: int = 0
    residues: int = 0
    id_bytes: int = 0        # id bytes written (ids generated after the exchange not included)
    deferred: int = 0        # records whose generated id waits for the unit's record base
    stops: int = 0
    counts: np.ndarray = field(default_factory=lambda: np.zeros(256, dtype=np.int64))
    # the first MAX_LISTED bad records: (local record, id, why, hint)
    listed: list = field(default_factory=list)
    error: BaseException | None = None           # a CorpusError that ended the scan of the unit
    done: bool = False


def scan_units(units: list[Unit], specs: list[InputSpec], alpha: Alphabet, shard: Path,
               column: str, id_column, on_invalid: str, chunk_bytes: int,
               batch_rows: int) -> tuple[list[UnitSummary], np.ndarray, dict]:
    """Scan this rank's units in order into the shard directory ``shard`` (the arrays of a
    corpus, local offsets, plus ``rejected.part`` and ``deferred.i64``). Returns the unit
    summaries, the length histogram and the scan's wall and CPU seconds.

    Stops early where the whole build must fail (the merge then reaches that error in corpus
    order, whoever scanned the units before it): a unit's read error; in error mode, MAX_LISTED bad
    records; an empty whole input, or (skip) one whose every record is bad."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    shard.mkdir(parents=True, exist_ok=True)
    w = ShardWriter(shard)
    rej = open(shard / REJECTED_PART, "w", encoding="utf-8")
    gen = open(shard / DEFERRED, "wb")
    summaries: list[UnitSummary] = []
    hist = np.zeros(1, dtype=np.int64)
    bad = 0
    try:
        for u in units:
            s = UnitSummary(u.index)
            summaries.append(s)
            spec = specs[u.file]
            try:
                for batch in iter_batches(spec, column, id_column, chunk_bytes=chunk_bytes,
                                          batch_rows=batch_rows, byte_range=u.byte_range,
                                          row_groups=u.row_groups):
                    n = len(batch)
                    if n == 0:
                        continue
                    if u.record_base is None:
                        ids, id_offs = deferred_ids(batch, n)
                        empty = np.flatnonzero(np.diff(id_offs) == 0)
                    else:
                        ids, id_offs = fill_ids(batch, spec.name, u.record_base + s.seen)
                        empty = None
                    res, offs, raw, st, ids, id_offs, problems, keep = clean_batch(
                        batch, alpha, ids, id_offs)
                    for j, rid, why, hint in problems:
                        if len(s.listed) < MAX_LISTED:
                            s.listed.append((s.seen + j + 1, rid, why, hint))
                        rej.write(f"{u.index}\t{s.seen + j + 1}\t{tsv_field(rid)}\t"
                                  f"{tsv_field(why)}\n")
                    if empty is not None and empty.size:
                        # (unit, shard record index, local record number) of each kept record
                        # whose id is generated after the exchange
                        pos = (np.arange(n) if keep is None
                               else np.full(n, -1, np.int64))
                        if keep is not None:
                            pos[keep] = np.arange(len(keep))
                        e = empty[pos[empty] >= 0]
                        trip = np.stack([np.full(e.size, u.index), w.n + pos[e], s.seen + e], 1)
                        gen.write(trip.astype("<i8").tobytes())
                        s.deferred += e.size
                    s.seen += n
                    s.rejected += len(problems)
                    bad += len(problems)
                    if res is not None:
                        w.add(res, offs, ids, id_offs)
                        s.kept += len(offs) - 1
                        s.residues += int(offs[-1])
                        s.id_bytes += int(id_offs[-1])
                        s.counts += raw
                        s.stops += st
                        hist = add_hist(hist, offs)
                    if on_invalid == "error" and bad >= MAX_LISTED:
                        break
            except CorpusError as e:
                s.error = e
                break
            if on_invalid == "error" and bad >= MAX_LISTED:
                break
            s.done = True
            whole = u.byte_range is None and u.row_groups is None
            if whole and (s.seen == 0 or (on_invalid == "skip" and s.kept == 0)):
                break   # the merge stops at this input
    finally:
        w.close(sync=False)     # scratch: the assembled arrays are synced
        rej.close()
        gen.close()
    return summaries, hist, {"scan": time.perf_counter() - t0,
                             "scan_cpu": time.process_time() - cpu0}
