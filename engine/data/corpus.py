"""The corpus: every input record, validated, normalised and memory-mapped.

A corpus is built once, in ONE streaming pass over its inputs (``Corpus.build``), into a cache
directory; afterwards it is only ever opened read-only (``Corpus.open``), memory-mapped, so a
corpus of 10^8 records costs no 10^8 Python objects.

Corpus index (DESIGN.md): the 0-based position of a record in the corpus — the inputs in the
order given, records in file order. Record numbers *within a file* (``source(i)``, error
messages, generated ids) are 1-based.

Inputs (see ``bioprune.engine.data.readers``): FASTA (.fasta/.fa/.fna/.faa, plain or .gz, multi-line
records; id = first word of the header), CSV (.csv[.gz]) / TSV (.tsv/.tab[.gz]) with a header
row, Parquet (.parquet/.pq), a directory saved by ``datasets.Dataset.save_to_disk``, or
``DIR::SPLIT`` for one split of a saved ``DatasetDict``. Tables take the sequence from
``column`` and the id from ``id_column``, else from an ``id`` column if there is one, else
``<file name>:<record number>``.

Cache directory layout (all little-endian, raw, no header; shapes from ``corpus.json``)::

    corpus.json       inputs (path, size, mtime), molecule, column, per-file counts, stats
    residues.u8       normalised residues of all records, concatenated (ASCII, uint8)
    offsets.i64       int64[n+1]: record i is residues[offsets[i]:offsets[i+1]]
    lengths.i32       int32[n]
    ids.u8            record ids (UTF-8), concatenated
    id_offsets.i64    int64[n+1]
"""
from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from bioprune.engine.data.alphabets import Alphabet, get_alphabet
from bioprune.engine.io.atomic import atomic_path, write_json
from bioprune.engine.data.readers import CorpusError, InputSpec, RawBatch, iter_batches, resolve_input

__all__ = [
    "Corpus",
    "CorpusError",
    "load_corpus",
]

FORMAT_VERSION = 1
META = "corpus.json"
_FILES = {
    "residues": ("residues.u8", np.uint8),
    "offsets": ("offsets.i64", np.dtype("<i8")),
    "lengths": ("lengths.i32", np.dtype("<i4")),
    "ids": ("ids.u8", np.uint8),
    "id_offsets": ("id_offsets.i64", np.dtype("<i8")),
}

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


# --------------------------------------------------------------------------------------------
# building


def _identity(specs: Sequence[InputSpec], molecule: str, column: str, id_column) -> dict:
    """What decides whether a cache matches a request."""
    return {
        "molecule": molecule,
        "column": column,
        "id_column": id_column,
        "inputs": [
            {"path": str(s.path), "split": s.split, "format": s.format, **s.fingerprint()}
            for s in specs
        ],
    }


def _identity_of_meta(meta: dict) -> dict:
    return {
        "molecule": meta.get("molecule"),
        "column": meta.get("column"),
        "id_column": meta.get("id_column"),
        "inputs": [
            {k: f.get(k) for k in ("path", "split", "format", "size", "mtime_ns", "files") if k in f}
            for f in meta.get("inputs", [])
        ],
    }


def _describe_mismatch(have: dict, want: dict) -> str:
    for key in ("molecule", "column", "id_column"):
        if have.get(key) != want.get(key):
            return f"{key} was {have.get(key)!r}, now {want.get(key)!r}"
    hi, wi = have.get("inputs", []), want.get("inputs", [])
    if [f["path"] for f in hi] != [f["path"] for f in wi] or [f.get("split") for f in hi] != [
        f.get("split") for f in wi
    ]:
        return (f"inputs were [{', '.join(f['path'] for f in hi)}], "
                f"now [{', '.join(f['path'] for f in wi)}]")
    for a, b in zip(hi, wi):
        if a != b:
            what = [k for k in ("size", "mtime_ns", "files", "format") if a.get(k) != b.get(k)]
            return f"{b['path']} changed since the corpus was built ({', '.join(what)})"
    return "unknown difference"


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


def _build(specs: list[InputSpec], alpha: Alphabet, tmp: Path, column: str, id_column, identity,
           chunk_bytes: int, batch_rows: int) -> dict:
    t0 = time.perf_counter()
    w = _Writer(tmp)
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
            fcounts = np.zeros(256, dtype=np.int64)
            fstops = 0
            for batch in iter_batches(spec, column, id_column, chunk_bytes=chunk_bytes,
                                      batch_rows=batch_rows):
                if len(batch) == 0:
                    continue
                try:
                    res, offs, raw_counts, st = _normalise(batch, alpha)
                except _RecordProblem as p:
                    rid = batch.record_id(p.j)
                    raise CorpusError(p.problem, path=spec.display, record=nrec + p.j + 1,
                                      record_id=rid, hint=p.hint) from None
                ids, id_offs = _fill_ids(batch, spec.name, nrec)
                w.add(res, offs, ids, id_offs)
                fcounts += raw_counts
                fstops += st
                bc = np.bincount(np.diff(offs))
                if len(bc) > len(hist):
                    hist = np.concatenate([hist, np.zeros(len(bc) - len(hist), np.int64)])
                hist[: len(bc)] += bc
                nrec += len(batch)
                nres += int(offs[-1])
            if nrec == 0:
                raise CorpusError("empty input file (no records)", path=spec.display,
                                  hint="remove it from the inputs")
            counts += fcounts
            stops += fstops
            fmeta = {**ident, "spec": spec.spec, "first_index": first_index, "records": nrec,
                     "residues": nres, alpha.extra_class: _extra_counts(alpha, fcounts)}
            if alpha.stop is not None:
                fmeta["stripped_stops"] = fstops
            files_meta.append(fmeta)
        ok = True
    finally:
        w.close(sync=ok)
    n = w.n
    if n >= 2**63 - 1 or (hist.size and len(hist) - 1 >= 2**31):
        raise CorpusError("a record is longer than 2^31 - 1 residues")
    lens_present = np.flatnonzero(hist)
    seconds = time.perf_counter() - t0
    input_bytes = sum(f["size"] for f in files_meta)
    # normalised letter counts from raw byte counts (lowercase and T fold in)
    extra = _extra_counts(alpha, counts)
    meta = {
        "format_version": FORMAT_VERSION,
        "molecule": alpha.name,
        "column": column,
        "id_column": id_column,
        "inputs": files_meta,
        "n_records": n,
        "total_residues": w.nres,
        "id_bytes": w.nid,
        "length": {
            "min": int(lens_present[0]),
            "median": _median_from_hist(hist, n),
            "max": int(lens_present[-1]),
            "mean": w.nres / n,
        },
        alpha.extra_class: extra,
        "noncanonical_total": int(sum(extra.values())),
        "lowercase_residues": int(counts[ord("a"):ord("z") + 1].sum()),
    }
    if alpha.name == "rna":
        meta["t_read_as_u"] = int(counts[ord("T")] + counts[ord("t")])
    if alpha.stop is not None:
        meta["stripped_stops"] = stops
    meta["build"] = {
        "seconds": round(seconds, 4),
        "input_bytes": input_bytes,
        "records_per_s": round(n / seconds, 1) if seconds > 0 else None,
        "input_mb_per_s": round(input_bytes / 1e6 / seconds, 2) if seconds > 0 else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(tmp / META, meta)
    return meta


# --------------------------------------------------------------------------------------------
# the corpus


def _as_paths(paths) -> list:
    if isinstance(paths, (str, os.PathLike)):
        return [paths]
    paths = list(paths)
    if not paths:
        raise CorpusError("no corpus inputs given", hint="pass one or more FASTA/CSV/TSV/Parquet/dataset paths")
    return paths


class Corpus:
    """Read-only, memory-mapped view of a built corpus directory."""

    def __init__(self, root: Path, meta: dict, arrays: dict):
        self.root = Path(root)
        self._meta = meta
        self._res = arrays["residues"]
        self._off = arrays["offsets"]
        self._len = arrays["lengths"]
        self._ids = arrays["ids"]
        self._idoff = arrays["id_offsets"]
        self._file_starts = np.array([f["first_index"] for f in meta["inputs"]] + [meta["n_records"]],
                                     dtype=np.int64)

    # ---- construction

    @classmethod
    def build(cls, paths, molecule: str, cache_dir, column: str = "sequence",
              id_column: str | None = None, *, overwrite: bool = False,
              chunk_bytes: int = 8 << 20, batch_rows: int = 65536) -> "Corpus":
        """Read ``paths`` once (streaming), validate and normalise every record, and write the
        corpus into ``cache_dir`` atomically (a temporary sibling directory renamed at the end).
        An existing non-empty ``cache_dir`` is an error unless ``overwrite``."""
        alpha = get_alphabet(molecule)
        specs = [resolve_input(p) for p in _as_paths(paths)]
        cache_dir = Path(cache_dir).absolute()
        if cache_dir.exists():
            if not cache_dir.is_dir():
                raise CorpusError("corpus cache path exists and is not a directory", path=cache_dir,
                                  hint="pick another cache dir")
            if any(cache_dir.iterdir()) and not overwrite:
                raise CorpusError("corpus cache dir is not empty", path=cache_dir,
                                  hint="pick another cache dir, delete it, or use load_corpus()")
        identity = _identity(specs, alpha.name, column, id_column)
        cache_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_dir.parent / f".{cache_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            _build(specs, alpha, tmp, column, id_column, identity, chunk_bytes, batch_rows)
            # inputs must not have changed while we read them
            after = _identity(specs, alpha.name, column, id_column)
            if after != identity:
                raise CorpusError("an input changed while the corpus was being built: "
                                  + _describe_mismatch(identity, after), hint="build again")
            if overwrite and cache_dir.exists():
                trash = cache_dir.parent / f".{cache_dir.name}.old-{uuid.uuid4().hex[:8]}"
                os.rename(cache_dir, trash)
                os.rename(tmp, cache_dir)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                try:
                    os.rename(tmp, cache_dir)  # atomic; fails if a non-empty cache_dir appeared
                except OSError:
                    # another process built the same corpus meanwhile: keep theirs if it matches
                    meta = _read_meta(cache_dir)
                    if meta is None or _identity_of_meta(meta) != identity:
                        raise CorpusError("corpus cache dir was filled by another process while "
                                          "building", path=cache_dir,
                                          hint="pick another cache dir or delete it") from None
                    shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls.open(cache_dir)

    @classmethod
    def open(cls, cache_dir) -> "Corpus":
        """Open a built corpus (memory-mapped, read-only)."""
        root = Path(cache_dir)
        meta_path = root / META
        try:
            meta = json.loads(meta_path.read_text())
        except FileNotFoundError:
            raise CorpusError("no corpus here (corpus.json missing)", path=root,
                              hint="build it with Corpus.build / load_corpus") from None
        except (OSError, ValueError) as e:
            raise CorpusError(f"unreadable corpus.json ({e})", path=root,
                              hint="delete the cache dir and build again") from None
        if meta.get("format_version") != FORMAT_VERSION:
            raise CorpusError(f"corpus format version {meta.get('format_version')} is not "
                              f"{FORMAT_VERSION}", path=root, hint="delete the cache dir and build again")
        n = int(meta["n_records"])
        expect = {"residues": meta["total_residues"], "offsets": n + 1, "lengths": n,
                  "ids": meta["id_bytes"], "id_offsets": n + 1}
        arrays = {}
        for key, (fn, dt) in _FILES.items():
            p = root / fn
            dt = np.dtype(dt)
            try:
                size = p.stat().st_size
            except OSError as e:
                raise CorpusError(f"corpus file {fn} missing ({e})", path=root,
                                  hint="delete the cache dir and build again") from None
            if size != expect[key] * dt.itemsize:
                raise CorpusError(f"corpus file {fn} has {size} bytes, expected "
                                  f"{expect[key] * dt.itemsize}", path=root,
                                  hint="the cache is corrupt: delete it and build again")
            arrays[key] = (np.memmap(p, dtype=dt, mode="r", shape=(expect[key],)) if size
                           else np.zeros(0, dtype=dt))
        return cls(root, meta, arrays)

    # ---- access

    def __len__(self) -> int:
        return int(self._meta["n_records"])

    def __repr__(self) -> str:
        return (f"Corpus({str(self.root)!r}, molecule={self.molecule!r}, records={len(self)}, "
                f"residues={self.total_residues})")

    @property
    def molecule(self) -> str:
        return self._meta["molecule"]

    @property
    def alphabet(self) -> Alphabet:
        return get_alphabet(self.molecule)

    @property
    def stats(self) -> dict:
        """The contents of corpus.json (inputs, counts, length summary, noncanonical counts)."""
        return self._meta

    @property
    def total_residues(self) -> int:
        return int(self._meta["total_residues"])

    @property
    def lengths(self) -> np.ndarray:
        """int32[n] residue counts (memory-mapped)."""
        return self._len

    @property
    def offsets(self) -> np.ndarray:
        """int64[n+1]: record i is ``residues_flat[offsets[i]:offsets[i+1]]`` (memory-mapped)."""
        return self._off

    @property
    def residues_flat(self) -> np.ndarray:
        """uint8[total_residues]: all normalised residues, concatenated (memory-mapped)."""
        return self._res

    @property
    def paths(self) -> list[str]:
        """The inputs, in corpus order (``DIR::SPLIT`` for a dataset split)."""
        return [f["path"] + ("::" + f["split"] if f.get("split") else "") for f in self._meta["inputs"]]

    def _index(self, i) -> int:
        i = int(i)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"corpus index {i} out of range [0, {n})")
        return i

    def residues(self, i: int) -> np.ndarray:
        """The normalised residues of record ``i`` (uint8 ASCII view, read-only)."""
        i = self._index(i)
        return self._res[self._off[i]:self._off[i + 1]]

    def sequence(self, i: int) -> str:
        return self.residues(i).tobytes().decode("ascii")

    def record_id(self, i: int) -> str:
        i = self._index(i)
        return self._ids[self._idoff[i]:self._idoff[i + 1]].tobytes().decode("utf-8", "replace")

    def source(self, i: int) -> tuple[str, int]:
        """(input path, 1-based record number within that input) of corpus index ``i``."""
        i = self._index(i)
        k = int(np.searchsorted(self._file_starts, i, side="right") - 1)
        return self.paths[k], i - int(self._file_starts[k]) + 1

    def file_range(self, k: int) -> tuple[int, int]:
        """Corpus indices [start, stop) of the k-th input."""
        return int(self._file_starts[k]), int(self._file_starts[k + 1])

    # ---- output

    def write_fasta(self, indices: Iterable[int], path, line_width: int = 60) -> int:
        """Write the records ``indices`` (in the order given) to FASTA, atomically. Headers are
        ``>{record_id} index={i}``. Returns the number of records written."""
        if line_width <= 0:
            raise ValueError("line_width must be positive")
        idx = np.asarray(indices if not isinstance(indices, (int, np.integer)) else [indices])
        idx = idx.astype(np.int64, copy=False).ravel()
        count = 0
        with atomic_path(path) as tmp:
            with open(tmp, "wb", buffering=1 << 20) as f:
                for i in idx:
                    i = self._index(i)
                    f.write(f">{self.record_id(i)} index={i}\n".encode())
                    r = self._res[self._off[i]:self._off[i + 1]].tobytes()
                    for s in range(0, len(r), line_width):
                        f.write(r[s:s + line_width])
                        f.write(b"\n")
                    count += 1
                f.flush()
                os.fsync(f.fileno())
        return count


def load_corpus(paths, molecule: str, cache_dir, column: str = "sequence",
                id_column: str | None = None) -> Corpus:
    """Open the corpus cached in ``cache_dir`` if it was built from the same inputs (paths,
    sizes, mtimes, molecule, column, id column); otherwise build it. Under a distributed launch
    rank 0 builds while the other ranks wait at a barrier; then every rank opens it.

    A cache built from different inputs is an error (never silently reused)."""
    from bioprune.engine.runtime import distributed

    cache_dir = Path(cache_dir).absolute()
    err = None
    if distributed.is_main():
        try:
            _check_or_build(paths, molecule, cache_dir, column, id_column)
        except BaseException as e:  # every rank must reach the barrier
            err = e
    distributed.barrier()
    if err is not None:
        raise err
    if not (cache_dir / META).exists():
        raise CorpusError("rank 0 failed to build the corpus (see its error)", path=cache_dir)
    corpus = Corpus.open(cache_dir)
    if not distributed.is_main():
        _check_matches(corpus.stats, paths, molecule, cache_dir, column, id_column)
    return corpus


def _read_meta(cache_dir: Path) -> dict | None:
    try:
        return json.loads((Path(cache_dir) / META).read_text())
    except (OSError, ValueError):
        return None


def _check_matches(meta, paths, molecule, cache_dir, column, id_column):
    specs = [resolve_input(p) for p in _as_paths(paths)]
    want = _identity(specs, get_alphabet(molecule).name, column, id_column)
    have = _identity_of_meta(meta)
    if have != want:
        raise CorpusError(
            "corpus cache was built from different inputs: " + _describe_mismatch(have, want),
            path=cache_dir,
            hint="pick another cache dir or delete this one (a stale corpus is never reused)",
        )


def _check_or_build(paths, molecule, cache_dir: Path, column, id_column) -> None:
    meta_path = cache_dir / META
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as e:
            raise CorpusError(f"unreadable corpus.json ({e})", path=cache_dir,
                              hint="delete the cache dir and build again") from None
        _check_matches(meta, paths, molecule, cache_dir, column, id_column)
        return
    if cache_dir.exists() and cache_dir.is_dir() and any(cache_dir.iterdir()):
        raise CorpusError("cache dir is not empty and holds no corpus", path=cache_dir,
                          hint="pick another cache dir or delete this one")
    Corpus.build(paths, molecule, cache_dir, column=column, id_column=id_column)
