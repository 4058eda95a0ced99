"""Streaming readers for corpus inputs: FASTA (plain/gzip), CSV/TSV (plain/gzip), Parquet and
Hugging Face datasets saved with ``save_to_disk``.

Every reader yields ``RawBatch`` objects: a batch of records in columnar form (one ``uint8``
array of raw sequence bytes plus ``int64`` offsets, the same for ids), so that no per-record
Python object is created on the hot path. Normalisation and validation against the molecule's
alphabet happen in ``bioprune.engine.data.corpus``.

Input syntax (``resolve_input``):
    * a file, format from its extension (case-insensitive):
      ``.fasta .fa .fna .faa .ffn .frn`` (+ ``.gz``) FASTA; ``.csv`` (+ ``.gz``) CSV;
      ``.tsv .tab`` (+ ``.gz``) TSV; ``.parquet .pq`` Parquet;
    * a directory written by ``datasets.Dataset.save_to_disk``;
    * ``DIR::SPLIT`` for one split of a directory written by ``datasets.DatasetDict.save_to_disk``
      (e.g. ``data/hf::train``). A DatasetDict given without a split is an error listing its
      splits.
"""
from __future__ import annotations

import gzip
import os
import queue
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from bioprune.engine.data.alphabets import WHITESPACE

__all__ = [
    "CorpusError",
    "InputSpec",
    "RawBatch",
    "resolve_input",
    "iter_batches",
    "FASTA_EXTENSIONS",
    "TABLE_EXTENSIONS",
]

FASTA_EXTENSIONS = (".fasta", ".fa", ".fna", ".faa", ".ffn", ".frn")
CSV_EXTENSIONS = (".csv",)
TSV_EXTENSIONS = (".tsv", ".tab")
PARQUET_EXTENSIONS = (".parquet", ".pq")
TABLE_EXTENSIONS = CSV_EXTENSIONS + TSV_EXTENSIONS + PARQUET_EXTENSIONS
SPLIT_SEP = "::"

_ACCEPTED = (
    "FASTA (.fasta/.fa/.fna/.faa[.gz]), CSV (.csv[.gz]), TSV (.tsv/.tab[.gz]), "
    "Parquet (.parquet/.pq), or a directory saved by datasets' save_to_disk (DIR or DIR::SPLIT)"
)

_WS = np.zeros(256, dtype=bool)
_WS[np.frombuffer(WHITESPACE, dtype=np.uint8)] = True
_NL = ord("\n")
_GT = ord(">")


class CorpusError(ValueError):
    """A problem with a corpus input or cache. The message names the file, the record (1-based
    record number within the file, and its id when known), the problem, and what to do."""

    def __init__(self, problem: str, path=None, record: int | None = None,
                 record_id: str | None = None, hint: str | None = None):
        self.problem = problem
        self.path = None if path is None else str(path)
        self.record = record
        self.record_id = record_id
        self.hint = hint
        parts = []
        if self.path is not None:
            parts.append(self.path)
        if record is not None:
            where = f"record {record}"
            if record_id:
                where += f" (id {record_id!r})"
            parts.append(where)
        msg = ": ".join(parts + [problem])
        if hint:
            msg += f"; {hint}"
        super().__init__(msg)
        # keep pickling (multiprocessing) working: CorpusError(msg) rebuilds the same message
        self.args = (msg,)


@dataclass(frozen=True)
class InputSpec:
    """One corpus input. ``spec`` is the string as given; ``path`` the absolute path."""

    spec: str
    path: Path
    format: str  # "fasta" | "csv" | "tsv" | "parquet" | "hf"
    compressed: bool = False
    split: str | None = None

    @property
    def display(self) -> str:
        """How messages and default ids name this input."""
        s = str(self.path)
        return s + SPLIT_SEP + self.split if self.split else s

    @property
    def name(self) -> str:
        """Short name used for generated record ids: ``<name>:<record number>``."""
        return self.path.name + (SPLIT_SEP + self.split if self.split else "")

    def fingerprint(self) -> dict:
        """Size and modification time (ns) — what a cached corpus is checked against.
        For a dataset directory: total size and newest mtime of the files under it."""
        try:
            if self.format == "hf":
                size, mtime, nfiles = 0, 0, 0
                for root, _dirs, files in os.walk(self.path):
                    for fn in files:
                        st = os.stat(os.path.join(root, fn))
                        size += st.st_size
                        mtime = max(mtime, st.st_mtime_ns)
                        nfiles += 1
                return {"size": size, "mtime_ns": mtime, "files": nfiles}
            st = os.stat(self.path)
            return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        except OSError as e:
            raise _unreadable(self, e) from e


@dataclass
class RawBatch:
    """Records in columnar form. ``offsets``/``id_offsets`` are int64 with n+1 entries starting
    at 0. ``ids`` is None when the input has no ids (they are generated). ``nulls`` marks
    missing (null) table cells, or is None."""

    data: np.ndarray
    offsets: np.ndarray
    ids: np.ndarray | None = None
    id_offsets: np.ndarray | None = None
    nulls: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def record_id(self, j: int) -> str | None:
        if self.ids is None:
            return None
        return bytes(self.ids[self.id_offsets[j]:self.id_offsets[j + 1]]).decode("utf-8", "replace")


# --------------------------------------------------------------------------------------------
# input resolution


def resolve_input(p) -> InputSpec:
    """Parse one input argument (path, or ``DIR::SPLIT``) and pick its format by extension."""
    spec = os.fspath(p)
    split = None
    path_str = spec
    if SPLIT_SEP in spec and not os.path.exists(spec):
        path_str, split = spec.rsplit(SPLIT_SEP, 1)
        if not split:
            raise CorpusError(f"empty split name in {spec!r}", hint="write DIR::SPLIT, e.g. data/hf::train")
    path = Path(os.path.abspath(path_str))
    if not path.exists():
        raise CorpusError("file not found", path=path,
                          hint="check the path (inputs: " + _ACCEPTED + ")")
    if path.is_dir():
        return InputSpec(spec, path, "hf", False, split)
    if split is not None:
        raise CorpusError(f"'{SPLIT_SEP}{split}' given but the path is a file, not a dataset directory",
                          path=path, hint="use DIR::SPLIT only with a datasets.DatasetDict saved to disk")
    name = path.name.lower()
    compressed = name.endswith(".gz")
    base = name[:-3] if compressed else name
    if base.endswith(FASTA_EXTENSIONS):
        fmt = "fasta"
    elif base.endswith(CSV_EXTENSIONS):
        fmt = "csv"
    elif base.endswith(TSV_EXTENSIONS):
        fmt = "tsv"
    elif base.endswith(PARQUET_EXTENSIONS) and not compressed:
        fmt = "parquet"
    else:
        raise CorpusError("unknown input format (by file extension)", path=path,
                          hint="accepted: " + _ACCEPTED)
    return InputSpec(spec, path, fmt, compressed, None)


def _unreadable(spec: InputSpec, exc: BaseException, records_read: int = 0) -> CorpusError:
    """A CorpusError for a file that cannot be read (``records_read`` complete records were
    read before the failure)."""
    if isinstance(exc, CorpusError):
        return exc
    if isinstance(exc, FileNotFoundError):
        problem, hint = "file not found", "check the path"
    elif isinstance(exc, PermissionError):
        problem, hint = "permission denied", "make the file readable"
    elif isinstance(exc, IsADirectoryError):
        problem, hint = "is a directory", "pass a file, or a dataset directory saved by save_to_disk"
    elif isinstance(exc, EOFError) or "truncated" in str(exc).lower():
        problem = f"truncated or corrupt compressed file ({exc})"
        hint = "the file ends early; re-download or re-compress it"
    elif isinstance(exc, (gzip.BadGzipFile, zlib.error)):
        problem = f"not a valid gzip file ({exc})"
        hint = "re-compress it with gzip, or drop the .gz extension if it is plain text"
    else:
        problem = f"unreadable file ({type(exc).__name__}: {exc})"
        hint = "check that the file is complete and in the format its extension says"
    if records_read:
        problem += f" after record {records_read}"
    return CorpusError(problem, path=spec.display, hint=hint)


def _check_not_gzip(spec: InputSpec) -> None:
    """A plain-named file that is gzip data gets a clear message instead of garbage errors."""
    try:
        with open(spec.path, "rb") as f:
            magic = f.read(2)
    except OSError as e:
        raise _unreadable(spec, e) from e
    if magic == b"\x1f\x8b":
        raise CorpusError("the file is gzip-compressed but its name does not end in .gz",
                          path=spec.display, hint="rename it to end in .gz")


def iter_batches(spec: InputSpec, column: str = "sequence", id_column: str | None = None, *,
                 chunk_bytes: int = 8 << 20, batch_rows: int = 65536) -> Iterator[RawBatch]:
    """Yield the records of one input, in file order, as RawBatch objects."""
    if spec.format == "fasta":
        yield from _fasta_batches(spec, chunk_bytes)
    elif spec.format in ("csv", "tsv"):
        yield from _csv_batches(spec, column, id_column, chunk_bytes)
    elif spec.format == "parquet":
        yield from _parquet_batches(spec, column, id_column, batch_rows)
    elif spec.format == "hf":
        yield from _hf_batches(spec, column, id_column, batch_rows)
    else:  # pragma: no cover
        raise CorpusError(f"unknown format {spec.format!r}", path=spec.display)


# --------------------------------------------------------------------------------------------
# FASTA


class _ReadAhead:
    """Reads the next chunk(s) of a file in a background thread (decompression and disk reads
    release the GIL), so reading overlaps with parsing. Bounded: at most ``depth`` chunks wait."""

    def __init__(self, f, chunk_bytes: int, depth: int = 2):
        self._f, self._size = f, chunk_bytes
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, name="bioprune-readahead", daemon=True)

    def __enter__(self):
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            try:
                item = self._f.read(self._size)
            except BaseException as e:  # noqa: BLE001 - handed to the consumer
                item = e
            while not self._stop.is_set():
                try:
                    self._q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if not isinstance(item, bytes) or not item:
                return

    def next(self) -> bytes:
        item = self._q.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        return False


def _fasta_batches(spec: InputSpec, chunk_bytes: int) -> Iterator[RawBatch]:
    if not spec.compressed:
        _check_not_gzip(spec)
    try:
        f = gzip.open(spec.path, "rb") if spec.compressed else open(spec.path, "rb")
    except OSError as e:
        raise _unreadable(spec, e) from e
    nrec = 0  # records yielded so far (for error messages)
    first = True
    buf = b""
    with f, _ReadAhead(f, chunk_bytes) as chunks:
        while True:
            try:
                chunk = chunks.next()
            except (OSError, EOFError, zlib.error) as e:
                raise _unreadable(spec, e, records_read=nrec) from e
            if chunk:
                buf += chunk
                cut = buf.rfind(b"\n>")
                if cut < 0:
                    continue  # one record longer than the chunk: read on
                block, buf = buf[:cut + 1], buf[cut + 1:]
            else:
                block, buf = buf, b""
            if block:
                batch = _parse_fasta_block(spec, block, first)
                first = False
                if batch is not None:
                    nrec += len(batch)
                    yield batch
            if not chunk:
                return


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated index ranges [starts[k], starts[k] + lengths[k]) as one int64 array."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    cum = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=cum[1:])
    return np.repeat(starts - cum, lengths) + np.arange(total, dtype=np.int64)


def _parse_fasta_block(spec: InputSpec, block: bytes, first: bool) -> RawBatch | None:
    """Parse whole FASTA records (the block starts at a '>' line, except possibly the file's
    first block which may start with blank lines) into a RawBatch, vectorised with numpy."""
    if not block.endswith(b"\n"):
        block += b"\n"
    a = np.frombuffer(block, dtype=np.uint8)
    nl = np.flatnonzero(a == _NL)
    line_start = np.empty(len(nl), dtype=np.int64)
    line_start[0] = 0
    line_start[1:] = nl[:-1] + 1
    is_hdr = a[line_start] == _GT
    hs = line_start[is_hdr]  # header line starts ('>')
    he = nl[is_hdr]  # header line ends ('\n')
    n = len(hs)
    pre_end = int(hs[0]) if n else len(a)
    if pre_end > 0:
        pre = a[:pre_end]
        junk = np.flatnonzero(~_WS[pre])
        if junk.size:
            line = int(np.count_nonzero(pre[: junk[0]] == _NL)) + 1
            raise CorpusError(
                f"malformed FASTA: sequence data before the first '>' header (line {line})"
                if first else "malformed FASTA: data outside a record",
                path=spec.display,
                hint="every record must start with a '>' header line; is this really FASTA?",
            )
    if n == 0:
        return None
    # header text: from after '>' to before '\n'
    hlen = he - hs - 1
    hidx = _ranges(hs + 1, hlen)
    hb = a[hidx]
    # sequence bytes: everything but newlines, header text and the '>' of each header
    seq_mask = a != _NL
    seq_mask[hs] = False
    seq_mask[hidx] = False
    seq_mask[:pre_end] = False
    data = a[seq_mask]
    # sequence bytes per record: bytes between header end and next header start, minus newlines
    nxt = np.empty(n, dtype=np.int64)
    nxt[:-1] = hs[1:]
    nxt[-1] = len(a)
    n_nl = np.searchsorted(nl, nxt) - np.searchsorted(nl, he)
    seq_len = (nxt - he) - n_nl
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(seq_len, out=offsets[1:])
    # id = first word of the header text
    hoff = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(hlen, out=hoff[1:])
    ws = np.flatnonzero(_WS[hb])
    k = np.searchsorted(ws, hoff[:-1])
    first_ws = hoff[1:].copy()
    ok = k < len(ws)
    first_ws[ok] = np.minimum(ws[k[ok]], hoff[1:][ok])
    id_len = first_ws - hoff[:-1]
    ids = hb[_ranges(hoff[:-1], id_len)]
    id_offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(id_len, out=id_offsets[1:])
    return RawBatch(data, offsets, ids, id_offsets)


# --------------------------------------------------------------------------------------------
# Arrow-based tables (CSV/TSV, Parquet, Hugging Face datasets)


def _arrow_strings(arr) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(data uint8, offsets int64 from 0, nulls bool | None) of an Arrow string/binary array,
    zero-copy where possible."""
    import pyarrow as pa

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    t = arr.type
    if pa.types.is_string(t) or pa.types.is_binary(t):
        odt = np.int32
    elif pa.types.is_large_string(t) or pa.types.is_large_binary(t):
        odt = np.int64
    else:
        arr = arr.cast(pa.large_string())
        odt = np.int64
    n = len(arr)
    if n == 0:
        return np.zeros(0, np.uint8), np.zeros(1, np.int64), None
    bufs = arr.buffers()
    offs = np.frombuffer(bufs[1], dtype=odt)[arr.offset: arr.offset + n + 1].astype(np.int64)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    data = data[offs[0]:offs[-1]]
    offs -= offs[0]
    nulls = None
    if arr.null_count:
        nulls = np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    return data, offs, nulls


def _is_stringlike(t) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        return _is_stringlike(t.value_type)
    return (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
            or pa.types.is_large_binary(t) or str(t) in ("string_view", "binary_view"))


def _pick_columns(spec: InputSpec, names: list[str], column: str, id_column: str | None):
    if column not in names:
        raise CorpusError(
            f"column {column!r} not found; available columns: {', '.join(map(str, names))}",
            path=spec.display, hint="pass --column NAME",
        )
    if id_column is not None:
        if id_column not in names:
            raise CorpusError(
                f"id column {id_column!r} not found; available columns: {', '.join(map(str, names))}",
                path=spec.display, hint="pass --id-column NAME, or leave it out",
            )
        idc = id_column
    else:
        idc = "id" if ("id" in names and column != "id") else None
    return idc


def _table_batch(spec: InputSpec, table, column: str, idc: str | None) -> RawBatch:
    seq = table.column(column)
    data, offs, nulls = _arrow_strings(seq)
    ids = id_offs = None
    if idc is not None:
        ids, id_offs, _ = _arrow_strings(table.column(idc))  # null ids -> empty -> generated
    return RawBatch(data, offs, ids, id_offs, nulls)


def _csv_batches(spec: InputSpec, column: str, id_column: str | None, block_size: int):
    import pyarrow as pa
    import pyarrow.csv as pcsv

    if not spec.compressed:
        _check_not_gzip(spec)
    delim = "\t" if spec.format == "tsv" else ","
    parse = pcsv.ParseOptions(delimiter=delim)
    read = pcsv.ReadOptions(block_size=max(1 << 16, min(block_size, 1 << 30)))

    def stream():
        return pa.input_stream(str(spec.path), compression="gzip" if spec.compressed else None)

    def open_reader(convert):
        try:
            return pcsv.open_csv(stream(), read_options=read, parse_options=parse, convert_options=convert)
        except Exception as e:  # noqa: BLE001 - arrow raises several types
            if "empty csv" in str(e).lower():
                raise CorpusError("empty input file (no header, no records)", path=spec.display,
                                  hint="remove it from the inputs") from e
            raise _unreadable(spec, e) from e

    # first pass over the header only: the column names (cheap: one block)
    r0 = open_reader(pcsv.ConvertOptions(column_types={}))
    names = r0.schema.names
    r0 = None
    idc = _pick_columns(spec, names, column, id_column)
    cols = [column] + ([idc] if idc else [])
    convert = pcsv.ConvertOptions(
        include_columns=cols,
        column_types={c: pa.large_string() for c in cols},
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    reader = open_reader(convert)
    nrec = 0
    while True:
        try:
            rb = reader.read_next_batch()
        except StopIteration:
            return
        except Exception as e:  # noqa: BLE001
            if isinstance(e, CorpusError):
                raise
            raise _unreadable(spec, e, records_read=nrec) from e
        if rb.num_rows == 0:
            continue
        nrec += rb.num_rows
        yield _table_batch(spec, rb, column, idc)


def _parquet_batches(spec: InputSpec, column: str, id_column: str | None, batch_rows: int):
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(str(spec.path))
        schema = pf.schema_arrow
    except Exception as e:  # noqa: BLE001
        raise _unreadable(spec, e) from e
    idc = _pick_columns(spec, schema.names, column, id_column)
    t = schema.field(column).type
    if not _is_stringlike(t):
        raise CorpusError(f"column {column!r} has type {t}, expected strings", path=spec.display,
                          hint="pass --column NAME of the sequence column")
    cols = [column] + ([idc] if idc else [])
    nrec = 0
    it = pf.iter_batches(batch_size=batch_rows, columns=cols)
    while True:
        try:
            rb = next(it)
        except StopIteration:
            return
        except Exception as e:  # noqa: BLE001
            raise _unreadable(spec, e, records_read=nrec) from e
        if rb.num_rows == 0:
            continue
        nrec += rb.num_rows
        yield _table_batch(spec, rb, column, idc)


def _load_hf(spec: InputSpec):
    import datasets

    try:
        obj = datasets.load_from_disk(str(spec.path))
    except Exception as e:  # noqa: BLE001
        raise CorpusError(
            f"not a Hugging Face dataset directory ({type(e).__name__}: {e})", path=spec.display,
            hint="pass a directory written by datasets' save_to_disk (DIR, or DIR::SPLIT for a "
                 "DatasetDict), or a FASTA/CSV/TSV/Parquet file",
        ) from e
    if isinstance(obj, datasets.DatasetDict):
        splits = list(obj.keys())
        if spec.split is None:
            raise CorpusError(
                f"is a DatasetDict with splits: {', '.join(splits)}", path=spec.display,
                hint=f"name one split as DIR{SPLIT_SEP}SPLIT, e.g. {spec.path}{SPLIT_SEP}{splits[0] if splits else 'train'}",
            )
        if spec.split not in obj:
            raise CorpusError(
                f"split {spec.split!r} not found; available splits: {', '.join(splits)}",
                path=spec.path, hint=f"use DIR{SPLIT_SEP}SPLIT with one of those",
            )
        return obj[spec.split]
    if spec.split is not None:
        raise CorpusError(
            f"'{SPLIT_SEP}{spec.split}' given but the directory holds a single Dataset (no splits)",
            path=spec.path, hint=f"drop '{SPLIT_SEP}{spec.split}'",
        )
    return obj


def _hf_batches(spec: InputSpec, column: str, id_column: str | None, batch_rows: int):
    ds = _load_hf(spec)
    names = list(ds.column_names)
    idc = _pick_columns(spec, names, column, id_column)
    t = ds.data.schema.field(column).type
    if not _is_stringlike(t):
        raise CorpusError(f"column {column!r} has type {t}, expected strings", path=spec.display,
                          hint="pass --column NAME of the sequence column")
    cols = [column] + ([idc] if idc else [])
    ds = ds.select_columns(cols).with_format("arrow")
    n = len(ds)
    for i in range(0, n, batch_rows):
        try:
            table = ds[i:min(n, i + batch_rows)]
        except Exception as e:  # noqa: BLE001
            raise _unreadable(spec, e, records_read=i) from e
        yield _table_batch(spec, table, column, idc)
