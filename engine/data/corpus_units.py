"""The pieces of a parallel corpus build: the inputs cut into units, one rank's scan of its units,
and the merge of every rank's unit summaries into the corpus index, the statistics and the
errors of the single-process build (:func:`bioprune.engine.data.corpus_build._build`).

A *unit* is a whole input, a byte range of a plain FASTA file (the records whose '>' header
starts in the range, see ``read_fasta._fasta_batches``), or a run of row groups of a Parquet
file. Gzip FASTA, CSV/TSV (plain or gzip) and Hugging Face datasets stay whole: gzip cannot be
entered mid-stream, a CSV row boundary cannot be found without parsing from the start (quoted
newlines), and datasets are rarely the large inputs. Units are in corpus order and each rank
owns a contiguous run of them, so "rank order, then unit order, then record order" is the
corpus order of DESIGN.md.

The merge needs only small numbers per unit (records seen and kept, residues, id bytes, raw
byte counts, the first bad records) and one length histogram per rank, never the records.
Record numbers within a file are 1-based and count the rejected records (as in the
single-process build); a unit whose first record number is only known after the exchange
(a FASTA range not at the file start) keeps its numbers local until then.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bioprune.engine.data.alphabets import Alphabet
from bioprune.engine.data.corpus_build import (MAX_LISTED, _add_hist, _check_file, _clean_batch,
                                               _corpus_meta, _file_meta, _fill_ids,
                                               _raise_listed, _too_many_invalid, _tsv_field,
                                               _Writer)
from bioprune.engine.data.read_input import iter_batches
from bioprune.engine.data.readers import CorpusError, InputSpec

#: files smaller than twice this stay one unit (a range costs a seek and a partial chunk)
MIN_UNIT_BYTES = 32 << 20


@dataclass(frozen=True)
class Unit:
    """One piece of one input. ``record_base``: records of the file before this unit, or None
    when unknown before the exchange (a FASTA byte range after the first)."""

    index: int
    file: int
    owner: int
    byte_range: tuple[int, int | None] | None = None
    row_groups: tuple[int, int] | None = None
    record_base: int | None = 0


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


# ------------------------------------------------------------------------------------ plan


def _parquet_groups(spec: InputSpec) -> tuple[np.ndarray, np.ndarray] | None:
    """(rows, on-disk bytes) per row group, or None if the footer cannot be read (the scan will
    then report the file as a whole unit does)."""
    try:
        import pyarrow.parquet as pq

        md = pq.ParquetFile(str(spec.path)).metadata
        rows = np.array([md.row_group(i).num_rows for i in range(md.num_row_groups)], np.int64)
        size = np.array([sum(md.row_group(i).column(c).total_compressed_size
                             for c in range(md.num_columns)) for i in range(md.num_row_groups)],
                        np.int64)
        return rows, size
    except Exception:  # noqa: BLE001 - planning only
        return None


def plan_units(specs: list[InputSpec], sizes: list[int], world: int, *,
               units_per_rank: int = 1, min_unit_bytes: int = MIN_UNIT_BYTES) -> list[Unit]:
    """Cut the inputs into units and give each rank a contiguous run of them.

    The inputs are laid end to end as one byte stream of S bytes, cut into ``world *
    units_per_rank`` equal shares; a plain FASTA or multi-row-group Parquet file of at least
    2 × ``min_unit_bytes`` is cut where a share boundary falls inside it (a Parquet file at the
    nearest row-group boundary), pieces smaller than ``min_unit_bytes`` merged into their
    neighbour; every other input is one unit. A unit belongs to the rank whose share holds its
    middle byte, so the ranks get about S / world bytes each whatever the mix of file sizes."""
    total = sum(sizes)
    shares = world * max(1, units_per_rank)
    units: list[Unit] = []

    def owner(mid: float) -> int:
        return min(world - 1, int(mid * world // total)) if total else 0

    def add(k, g, a, b, **kw):
        units.append(Unit(len(units), k, owner(g + (a + b) / 2), **kw))

    g = 0
    for k, (spec, size) in enumerate(zip(specs, sizes)):
        near = range(g * shares // total, (g + size) * shares // total + 2) if total else ()
        inner = [c for c in (total * j / shares - g for j in near if 0 < j < shares)
                 if 0 < c < size]      # share boundaries inside this input
        splittable = (spec.format == "fasta" and not spec.compressed) or spec.format == "parquet"
        groups = _parquet_groups(spec) if splittable and spec.format == "parquet" and inner \
            and size >= 2 * min_unit_bytes else None
        if not inner or size < 2 * min_unit_bytes or not splittable or (
                spec.format == "parquet" and (groups is None or len(groups[0]) < 2)):
            add(k, g, 0, size)
            g += size
            continue
        cuts = [0]
        for c in inner:
            if c - cuts[-1] >= min_unit_bytes and size - c >= min_unit_bytes:
                cuts.append(int(c))
        cuts.append(size)
        if len(cuts) == 2:
            add(k, g, 0, size)
        elif spec.format == "fasta":
            for a, b in zip(cuts[:-1], cuts[1:]):
                add(k, g, a, b, byte_range=(a, None if b == size else b),
                    record_base=0 if a == 0 else None)
        else:
            rows, rg_bytes = groups
            edge = np.concatenate([[0], np.cumsum(rg_bytes)]) * (size / max(1, rg_bytes.sum()))
            at = sorted({int(np.argmin(np.abs(edge - c))) for c in cuts[1:-1]} - {0, len(rows)})
            bounds = [0, *at, len(rows)]
            row_base = np.concatenate([[0], np.cumsum(rows)])
            if len(bounds) == 2:        # every cut fell on the file's ends
                add(k, g, 0, size)
            else:
                for a, b in zip(bounds[:-1], bounds[1:]):
                    add(k, g, edge[a], edge[b], row_groups=(a, b), record_base=int(row_base[a]))
        g += size
    return units


# ------------------------------------------------------------------------------------ scan


def _deferred_ids(batch, n: int):
    """The ids a FASTA batch carries (an empty one waits for its generated id)."""
    if batch.ids is None:
        return np.zeros(0, np.uint8), np.zeros(n + 1, np.int64)
    return batch.ids, batch.id_offsets


def scan_units(units: list[Unit], specs: list[InputSpec], alpha: Alphabet, shard: Path,
               column: str, id_column, on_invalid: str, chunk_bytes: int,
               batch_rows: int) -> tuple[list[UnitSummary], np.ndarray, dict]:
    """Scan this rank's units in order into the shard directory ``shard`` (the arrays of a
    corpus, local offsets, plus ``rejected.part`` and ``deferred.i64``). Returns the unit
    summaries, the length histogram and the scan's wall and CPU seconds.

    Stops early where the whole build must fail (the same rules as the single-process build,
    so the merge reaches the same error): a unit's read error; in error mode, MAX_LISTED bad
    records; an empty whole input, or (skip) one whose every record is bad."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    shard.mkdir(parents=True, exist_ok=True)
    w = _Writer(shard)
    rej = open(shard / "rejected.part", "w", encoding="utf-8")
    gen = open(shard / "deferred.i64", "wb")
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
                        ids, id_offs = _deferred_ids(batch, n)
                        empty = np.flatnonzero(np.diff(id_offs) == 0)
                    else:
                        ids, id_offs = _fill_ids(batch, spec.name, u.record_base + s.seen)
                        empty = None
                    res, offs, raw, st, ids, id_offs, problems, keep = _clean_batch(
                        batch, alpha, ids, id_offs)
                    for j, rid, why, hint in problems:
                        if len(s.listed) < MAX_LISTED:
                            s.listed.append((s.seen + j + 1, rid, why, hint))
                        rej.write(f"{u.index}\t{s.seen + j + 1}\t{_tsv_field(rid)}\t"
                                  f"{_tsv_field(why)}\n")
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
                        hist = _add_hist(hist, offs)
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


# ------------------------------------------------------------------------------------ merge


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
    """Walk the units in corpus order exactly as the single-process build walks its inputs:
    the same errors in the same order (the first MAX_LISTED bad records, a read error, an empty
    or all-bad input, the listed bad records at the end), else the statistics and every unit's
    offsets. ``summaries[u]`` is None for a unit its rank never reached (it stopped at an
    earlier error, which the walk meets first). ``generated``: id bytes per unit of the ids
    generated after the exchange."""
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
                raise _too_many_invalid(listed[:MAX_LISTED], MAX_LISTED, complete=False)
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
        _check_file(spec, seen, nrej, on_invalid, first_rej)
        counts += fcounts
        stops += fstops
        files_meta.append(_file_meta(ident, spec, alpha, on_invalid, first_index, seen - nrej,
                                     fres, nrej, fcounts, fstops))
    _raise_listed(listed, on_invalid)
    index[nu], residue[nu], id_offset[nu] = n, nres, nid
    meta = _corpus_meta(alpha, column, id_column, on_invalid, files_meta, n, nres, nid, hist,
                        counts, stops, nrej_total)
    return Merged(meta, file_base, index, residue, id_offset, nrej_total)


def sum_hists(hists) -> np.ndarray:
    """One length histogram from several (of different lengths)."""
    out = np.zeros(max(len(h) for h in hists), np.int64)
    for h in hists:
        out[:len(h)] += h
    return out
