"""Building a corpus: ONE streaming pass over the inputs that validates and normalises every
record (one numpy gather per chunk through the molecule's alphabet) and writes the memory-mapped
arrays of :mod:`bioprune.engine.data.corpus` into a cache directory, atomically (a temporary
sibling directory renamed at the end). Also the input identity (paths, sizes, mtimes, molecule,
columns) that decides whether a cache may be reused."""
from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np

from bioprune.engine.data.alphabets import Alphabet, get_alphabet
from bioprune.engine.data.read_input import iter_batches
from bioprune.engine.data.readers import CorpusError, InputSpec, RawBatch, resolve_input
from bioprune.engine.data.corpus_cache import (META, as_paths, describe_mismatch, identity_of_meta,
                                              input_identity, read_meta)
from bioprune.engine.io.atomic import write_json, write_text

FORMAT_VERSION = 1
_FILES = {
    "residues": ("residues.u8", np.uint8),
    "offsets": ("offsets.i64", np.dtype("<i8")),
    "lengths": ("lengths.i32", np.dtype("<i4")),
    "ids": ("ids.u8", np.uint8),
    "id_offsets": ("id_offsets.i64", np.dtype("<i8")),
}

# --------------------------------------------------------------------------------------------

# --------------------------------------------------------------------------------------------
# validation + normalisation of one batch


class _RecordProblem(Exception):
    def __init__(self, j: int, problem: str, hint: str | None = None):
        super().__init__(problem)
        self.j, self.problem, self.hint = j, problem, hint


def _char(b: int) -> str:
    c = chr(b)
    return repr(c) if c.isprintable() else f"byte 0x{b:02x}"


_TABLES: dict[str, tuple[bytes, bytes]] = {}


def _tables(alpha: Alphabet) -> tuple[bytes, bytes]:
    """(normalisation table, 'special' table) as bytes for bytes.translate: special maps every
    raw byte that is not a canonical uppercase residue to 1 (0 otherwise)."""
    t = _TABLES.get(alpha.name)
    if t is None:
        special = np.ones(256, dtype=np.uint8)
        special[np.frombuffer(alpha.canonical.encode(), dtype=np.uint8)] = 0
        t = _TABLES[alpha.name] = (alpha.lut.tobytes(), special.tobytes())
    return t


def _drop_whitespace(data: np.ndarray, offs: np.ndarray, ws: np.ndarray):
    n = len(offs) - 1
    keep = ~ws[data]
    idt = np.int32 if n < 2**31 else np.int64
    rec = np.repeat(np.arange(n, dtype=idt), np.diff(offs))
    new = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rec[keep], minlength=n), out=new[1:])
    return data[keep], new


def _normalise(batch: RawBatch, alpha: Alphabet):
    """Validate and normalise one batch, vectorised. Returns (residues, offsets, raw_counts,
    stops), raw_counts counting the raw bytes that are not canonical uppercase residues.
    Raises _RecordProblem(j, ...) for the first bad record (j is 0-based in the batch).

    Fast path: one ``bytes.translate`` flags the non-canonical bytes (usually none or few);
    only those are looked at individually."""
    n = len(batch)
    data, offs = batch.data, batch.offsets
    if batch.nulls is not None and batch.nulls.any():
        j = int(np.argmax(batch.nulls))
        raise _RecordProblem(j, "empty record (missing value in the sequence column)",
                             "fill in or remove the row")
    lut_b, special_b = _tables(alpha)
    raw = data.tobytes()
    special = np.frombuffer(raw.translate(special_b), dtype=np.uint8)
    idx = np.flatnonzero(special) if special.any() else None
    raw_counts = np.zeros(256, dtype=np.int64)
    stops = 0
    out = data
    problems: list[_RecordProblem] = []
    if idx is not None:
        raw_counts = (np.bincount(data[idx], minlength=256) if idx.size < len(data) // 8
                      else np.bincount(data, minlength=256))
        raw_counts[np.frombuffer(alpha.canonical.encode(), dtype=np.uint8)] = 0
        if raw_counts[alpha.whitespace].any():
            # whitespace is ignored (CRLF files, stray spaces): drop it and start again
            data, offs = _drop_whitespace(data, offs, alpha.whitespace)
            return _normalise(RawBatch(data, offs), alpha)
        lut = alpha.lut
        if raw_counts[lut == 0].any():
            bad = int(idx[np.argmax(lut[data[idx]] == 0)])
            j = int(np.searchsorted(offs, bad, side="right") - 1)
            problems.append(_RecordProblem(
                j,
                f"invalid character {_char(int(data[bad]))} at position {bad - offs[j] + 1} "
                f"(allowed for {alpha.name}: {alpha.allowed_text()})",
                "fix or remove the record, or check --molecule",
            ))
        present = np.flatnonzero(raw_counts)
        if (lut[present] != present).any():  # lowercase, T -> U
            out = np.frombuffer(raw.translate(lut_b), dtype=np.uint8)
        if alpha.stop is not None and raw_counts[ord(alpha.stop)]:
            s = ord(alpha.stop)
            star = idx[data[idx] == s]
            ends = offs[1:] - 1
            lengths0 = np.diff(offs)
            # a stop is stripped iff it is the last residue of its record
            rec = np.searchsorted(offs, star, side="right") - 1
            trailing = (star == ends[rec]) & (lengths0[rec] > 0)
            if not trailing.all():
                k = int(np.argmax(~trailing))
                j = int(rec[k])
                problems.append(_RecordProblem(
                    j,
                    f"'{alpha.stop}' (stop) at position {int(star[k] - offs[j]) + 1} is not the "
                    "last residue (only one trailing stop is allowed)",
                    "split or fix the record",
                ))
            star, rec = star[trailing], rec[trailing]
            keep = np.ones(len(out), dtype=bool)
            keep[star] = False
            out = out[keep]
            dec = np.zeros(n + 1, dtype=np.int64)
            dec[rec + 1] = 1
            offs = offs - np.cumsum(dec)
            stops = int(star.size)
            raw_counts[s] = 0
    lengths = np.diff(offs)
    if not lengths.all():
        j = int(np.argmin(lengths))
        problems.append(_RecordProblem(j, "empty record (no sequence)",
                                       "remove it or add its sequence"))
    if problems:  # report the first bad record in file order
        raise min(problems, key=lambda p: p.j)
    return out, offs, raw_counts, stops


ON_INVALID = ("error", "skip")
MAX_LISTED = 20          # bad records listed in one error (error mode stops scanning there)
REJECTED = "rejected.tsv"


def _one(batch: RawBatch, j: int) -> RawBatch:
    a, b = int(batch.offsets[j]), int(batch.offsets[j + 1])
    nulls = None if batch.nulls is None else batch.nulls[j:j + 1]
    return RawBatch(batch.data[a:b], np.array([0, b - a], dtype=np.int64), nulls=nulls)


def _all_problems(batch: RawBatch, alpha: Alphabet) -> list[_RecordProblem]:
    """Every bad record of a batch that :func:`_normalise` rejected, in record order. Candidates
    are found vectorised (null, empty, a byte outside the alphabet, an interior stop); only they
    are checked one by one."""
    n = len(batch)
    cand = np.zeros(n, dtype=bool)
    if batch.nulls is not None:
        cand |= batch.nulls
    data, offs = _drop_whitespace(batch.data, batch.offsets, alpha.whitespace)
    cand |= np.diff(offs) == 0
    bad = np.flatnonzero(alpha.lut[data] == 0)
    cand[np.searchsorted(offs, bad, side="right") - 1] = True
    if alpha.stop is not None:
        star = np.flatnonzero(data == ord(alpha.stop))
        rec = np.searchsorted(offs, star, side="right") - 1
        cand[rec[star != offs[rec + 1] - 1]] = True
    problems = []
    for j in np.flatnonzero(cand):
        try:
            _normalise(_one(batch, int(j)), alpha)
        except _RecordProblem as p:
            problems.append(_RecordProblem(int(j), p.problem, p.hint))
    return problems


def _take(batch: RawBatch, keep: np.ndarray, ids: np.ndarray, id_offs: np.ndarray):
    """(the records ``keep`` of ``batch`` as a RawBatch, their ids, id offsets)."""
    from bioprune.engine.data.read_fasta import _ranges

    lens = np.diff(batch.offsets)[keep]
    data = batch.data[_ranges(batch.offsets[:-1][keep], lens)]
    offs = np.zeros(len(keep) + 1, dtype=np.int64)
    np.cumsum(lens, out=offs[1:])
    ilens = np.diff(id_offs)[keep]
    new_ids = ids[_ranges(id_offs[:-1][keep], ilens)]
    ioffs = np.zeros(len(keep) + 1, dtype=np.int64)
    np.cumsum(ilens, out=ioffs[1:])
    nulls = None if batch.nulls is None else batch.nulls[keep]
    return RawBatch(data, offs, nulls=nulls), new_ids, ioffs


def _tsv_field(text: str) -> str:
    return " ".join(str(text).replace("\t", " ").split())


def _too_many_invalid(bad: list, total: int, complete: bool) -> CorpusError:
    head = (f"{total} invalid records" if complete else
            f"at least {total} invalid records (reading stopped after {MAX_LISTED})")
    allowed = ""
    lines = []
    for b in bad[:MAX_LISTED]:
        reason = b["reason"]
        k = reason.find(" (allowed for ")
        if k >= 0:   # say once what is allowed, not on every line
            reason, allowed = reason[:k], reason[k + 2:-1]
        lines.append(f"  {b['file']}: record {b['record']}"
                     + (f" (id {b['id']!r})" if b["id"] else "") + f": {reason}")
    if allowed:
        lines.append(f"  ({allowed}; check --molecule)")
    return CorpusError(
        f"{head}, the first {min(len(bad), MAX_LISTED)} listed below; fix or remove them, or pass "
        f"--on-invalid skip to drop them (they are then listed in {REJECTED})\n" + "\n".join(lines))


# --------------------------------------------------------------------------------------------
# building


def _median_from_hist(hist: np.ndarray, n: int) -> float:
    cum = np.cumsum(hist)
    lo = int(np.searchsorted(cum, (n - 1) // 2 + 1))
    hi = int(np.searchsorted(cum, n // 2 + 1))
    return (lo + hi) / 2


class _Writer:
    """Appends batches to the raw files of a corpus under construction."""

    def __init__(self, root: Path):
        self.f = {k: open(root / fn, "wb") for k, (fn, _) in _FILES.items()}
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


def _generated_ids(name: str, start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """ids '<name>:<record number>' for records start+1 .. start+n (1-based)."""
    parts = [f"{name}:{k}".encode() for k in range(start + 1, start + n + 1)]
    lens = np.fromiter((len(p) for p in parts), dtype=np.int64, count=n)
    offs = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lens, out=offs[1:])
    return np.frombuffer(b"".join(parts), dtype=np.uint8), offs


def _fill_ids(batch: RawBatch, name: str, start: int) -> tuple[np.ndarray, np.ndarray]:
    n = len(batch)
    if batch.ids is None:
        return _generated_ids(name, start, n)
    empty = np.flatnonzero(np.diff(batch.id_offsets) == 0)
    if empty.size == 0:
        return batch.ids, batch.id_offsets
    # rare: an empty FASTA id ('> text') or a null/empty id cell -> generated id for those
    parts = [
        f"{name}:{start + j + 1}".encode() if (batch.id_offsets[j] == batch.id_offsets[j + 1])
        else bytes(batch.ids[batch.id_offsets[j]:batch.id_offsets[j + 1]])
        for j in range(n)
    ]
    lens = np.fromiter((len(p) for p in parts), dtype=np.int64, count=n)
    offs = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lens, out=offs[1:])
    return np.frombuffer(b"".join(parts), dtype=np.uint8), offs


def _extra_counts(alpha: Alphabet, raw_counts: np.ndarray) -> dict:
    """Counts of the accepted non-canonical letters (after normalisation), e.g. {'N': 12}."""
    norm = np.bincount(alpha.lut, weights=raw_counts, minlength=256)
    return {c: int(norm[ord(c)]) for c in alpha.extra if norm[ord(c)]}


def _clean_batch(batch: RawBatch, alpha: Alphabet, ids: np.ndarray, id_offs: np.ndarray):
    """Validate and normalise a batch, dropping its bad records. Returns (residues, offsets,
    raw_counts, stops, ids, id_offsets, problems, keep): problems as (j, id, reason, hint) with j
    0-based in the batch given, in record order; keep the indices of the kept records, or None
    when all are kept; residues is None when none is."""
    try:
        return (*_normalise(batch, alpha), ids, id_offs, [], None)
    except _RecordProblem as p:
        problems = _all_problems(batch, alpha) or [p]
    listed = [(q.j, batch.record_id(q.j) or "", q.problem, q.hint) for q in problems]
    keep = np.setdiff1d(np.arange(len(batch)), [q.j for q in problems])
    batch, ids, id_offs = _take(batch, keep, ids, id_offs)
    if len(batch) == 0:
        return None, None, None, 0, ids, id_offs, listed, keep
    return (*_normalise(batch, alpha), ids, id_offs, listed, keep)


def _add_hist(hist: np.ndarray, offs: np.ndarray) -> np.ndarray:
    """``hist`` (counts of record lengths) plus the lengths of the records at ``offs``."""
    bc = np.bincount(np.diff(offs))
    if len(bc) > len(hist):
        hist = np.concatenate([hist, np.zeros(len(bc) - len(hist), np.int64)])
    hist[: len(bc)] += bc
    return hist


def _check_file(spec: InputSpec, seen: int, nrej: int, on_invalid: str, first_rejected) -> None:
    """The errors of a whole input: no records at all, or (skip) no valid record."""
    if seen == 0 and not nrej:
        raise CorpusError("empty input file (no records)", path=spec.display,
                          hint="remove it from the inputs")
    if seen == nrej and on_invalid == "skip":
        raise CorpusError(f"all {nrej} records are invalid (record {first_rejected['record']}: "
                          f"{first_rejected['reason']})", path=spec.display,
                          hint="check --molecule and the file")


def _file_meta(ident: dict, spec: InputSpec, alpha: Alphabet, on_invalid: str, first_index: int,
               records: int, residues: int, nrej: int, fcounts: np.ndarray, fstops: int) -> dict:
    fmeta = {**ident, "spec": spec.spec, "first_index": first_index, "records": records,
             "residues": residues, alpha.extra_class: _extra_counts(alpha, fcounts)}
    if on_invalid == "skip":
        fmeta["rejected"] = nrej
    if alpha.stop is not None:
        fmeta["stripped_stops"] = fstops
    return fmeta


def _raise_listed(rejected: list[dict], on_invalid: str) -> None:
    """At the end of an error-mode build: the bad records found (all of them, fewer than
    MAX_LISTED) as one error."""
    if len(rejected) == 1 and on_invalid == "error":
        b = rejected[0]
        raise CorpusError(b["reason"], path=b["file"], record=b["record"],
                          record_id=b["id"] or None,
                          hint=(b["hint"] or "fix or remove it")
                          + "; or pass --on-invalid skip to drop bad records")
    if rejected and on_invalid == "error":
        raise _too_many_invalid(rejected, len(rejected), complete=True)


def _rejected_row(r: dict) -> str:
    """One line of rejected.tsv (file, record, id, reason)."""
    return "\t".join((_tsv_field(r["file"]), str(r["record"]), _tsv_field(r["id"]),
                      _tsv_field(r["reason"])))


REJECTED_HEADER = "file\trecord\tid\treason"


def _corpus_meta(alpha: Alphabet, column: str, id_column, on_invalid: str, files_meta: list,
                 n: int, nres: int, nid: int, hist: np.ndarray, counts: np.ndarray, stops: int,
                 nrejected: int) -> dict:
    """corpus.json without its "build" section (the same for any way of building)."""
    if n == 0:
        raise CorpusError("no valid records in the inputs", hint="check --molecule and the files")
    if n >= 2**63 - 1 or (hist.size and len(hist) - 1 >= 2**31):
        raise CorpusError("a record is longer than 2^31 - 1 residues")
    lens_present = np.flatnonzero(hist)
    # normalised letter counts from raw byte counts (lowercase and T fold in)
    extra = _extra_counts(alpha, counts)
    meta = {
        "format_version": FORMAT_VERSION,
        "molecule": alpha.name,
        "column": column,
        "id_column": id_column,
        "inputs": files_meta,
        "n_records": n,
        "total_residues": nres,
        "id_bytes": nid,
        "length": {
            "min": int(lens_present[0]),
            "median": _median_from_hist(hist, n),
            "max": int(lens_present[-1]),
            "mean": nres / n,
        },
        alpha.extra_class: extra,
        "noncanonical_total": int(sum(extra.values())),
        "lowercase_residues": int(counts[ord("a"):ord("z") + 1].sum()),
    }
    if on_invalid == "skip":
        # the corpus index runs over the kept records only; rejected.tsv names the others
        meta["on_invalid"] = "skip"
        meta["rejected"] = nrejected
    if alpha.name == "rna":
        meta["t_read_as_u"] = int(counts[ord("T")] + counts[ord("t")])
    if alpha.stop is not None:
        meta["stripped_stops"] = stops
    return meta


def _build_info(seconds: float, input_bytes: int, n: int, **extra) -> dict:
    return {
        "seconds": round(seconds, 4),
        "input_bytes": input_bytes,
        "records_per_s": round(n / seconds, 1) if seconds > 0 else None,
        "input_mb_per_s": round(input_bytes / 1e6 / seconds, 2) if seconds > 0 else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }


def _build(specs: list[InputSpec], alpha: Alphabet, tmp: Path, column: str, id_column, identity,
           chunk_bytes: int, batch_rows: int, on_invalid: str = "error") -> dict:
    """The single-process build: every input in order, straight into the final arrays."""
    t0 = time.perf_counter()
    w = _Writer(tmp)
    rejected: list[dict] = []       # every bad record (skip), or the first MAX_LISTED (error)
    counts = np.zeros(256, dtype=np.int64)
    stops = 0
    hist = np.zeros(1, dtype=np.int64)
    files_meta = []
    ok = False
    try:
        for spec, ident in zip(specs, identity["inputs"]):
            first_index = w.n
            nrec = 0
            nres = 0
            nrej = 0
            first_rej = len(rejected)
            fcounts = np.zeros(256, dtype=np.int64)
            fstops = 0
            for batch in iter_batches(spec, column, id_column, chunk_bytes=chunk_bytes,
                                      batch_rows=batch_rows):
                if len(batch) == 0:
                    continue
                ids, id_offs = _fill_ids(batch, spec.name, nrec)
                res, offs, raw_counts, st, ids, id_offs, problems, _ = _clean_batch(
                    batch, alpha, ids, id_offs)
                nrec += len(batch)
                if problems:
                    rejected += [{"file": spec.display, "record": nrec - len(batch) + j + 1,
                                  "id": rid, "reason": why, "hint": hint}
                                 for j, rid, why, hint in problems]
                    nrej += len(problems)
                    if on_invalid == "error" and len(rejected) >= MAX_LISTED:
                        raise _too_many_invalid(rejected[:MAX_LISTED], MAX_LISTED, complete=False)
                    if res is None:
                        continue
                w.add(res, offs, ids, id_offs)
                fcounts += raw_counts
                fstops += st
                hist = _add_hist(hist, offs)
                nres += int(offs[-1])
            _check_file(spec, nrec, nrej, on_invalid, rejected[first_rej] if nrej else None)
            counts += fcounts
            stops += fstops
            files_meta.append(_file_meta(ident, spec, alpha, on_invalid, first_index,
                                         nrec - nrej, nres, nrej, fcounts, fstops))
        _raise_listed(rejected, on_invalid)
        ok = True
    finally:
        w.close(sync=ok)
    if on_invalid == "skip":
        write_text(tmp / REJECTED,
                   "\n".join([REJECTED_HEADER] + [_rejected_row(r) for r in rejected])
                   + "\n")
    meta = _corpus_meta(alpha, column, id_column, on_invalid, files_meta, w.n, w.nres, w.nid, hist,
                        counts, stops, len(rejected))
    meta["build"] = _build_info(time.perf_counter() - t0, sum(f["size"] for f in files_meta), w.n)
    write_json(tmp / META, meta)
    return meta


def build_corpus(paths, molecule: str, cache_dir, column: str = "sequence",
                 id_column: str | None = None, *, overwrite: bool = False,
                 chunk_bytes: int = 8 << 20, batch_rows: int = 65536,
                 on_invalid: str = "error") -> Path:
    """Read ``paths`` once (streaming), validate and normalise every record, and write the
    corpus into ``cache_dir`` atomically (a temporary sibling directory renamed at the end).
    An existing non-empty ``cache_dir`` is an error unless ``overwrite``."""
    alpha = get_alphabet(molecule)
    specs = [resolve_input(p) for p in as_paths(paths)]
    cache_dir = Path(cache_dir).absolute()
    if cache_dir.exists():
        if not cache_dir.is_dir():
            raise CorpusError("corpus cache path exists and is not a directory", path=cache_dir,
                              hint="pick another cache dir")
        if any(cache_dir.iterdir()) and not overwrite:
            raise CorpusError("corpus cache dir is not empty", path=cache_dir,
                              hint="pick another cache dir, delete it, or use load_corpus()")
    if on_invalid not in ON_INVALID:
        raise CorpusError(f"on_invalid must be one of {ON_INVALID}, not {on_invalid!r}")
    identity = input_identity(specs, alpha.name, column, id_column, on_invalid)
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir.parent / f".{cache_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _build(specs, alpha, tmp, column, id_column, identity, chunk_bytes, batch_rows,
               on_invalid)
        # inputs must not have changed while we read them
        after = input_identity(specs, alpha.name, column, id_column, on_invalid)
        if after != identity:
            raise CorpusError("an input changed while the corpus was being built: "
                              + describe_mismatch(identity, after), hint="build again")
        _publish(tmp, cache_dir, identity, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return cache_dir


def _publish(tmp: Path, cache_dir: Path, identity: dict, overwrite: bool = False) -> None:
    """Rename the finished build ``tmp`` onto ``cache_dir`` (atomic). A cache that appeared
    meanwhile is kept when it was built from the same inputs (another process, or another node
    sharing the directory, was faster), else it is an error."""
    if overwrite and cache_dir.exists():
        trash = cache_dir.parent / f".{cache_dir.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(cache_dir, trash)
        os.rename(tmp, cache_dir)
        shutil.rmtree(trash, ignore_errors=True)
        return
    try:
        os.rename(tmp, cache_dir)  # atomic; fails if a non-empty cache_dir appeared
    except OSError:
        meta = read_meta(cache_dir)
        if meta is None or identity_of_meta(meta) != identity:
            raise CorpusError("corpus cache dir was filled by another process while "
                              "building", path=cache_dir,
                              hint="pick another cache dir or delete it") from None
        shutil.rmtree(tmp, ignore_errors=True)
