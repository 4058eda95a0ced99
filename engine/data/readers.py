"""Streaming readers for corpus inputs: FASTA (plain/gzip), CSV/TSV (plain/gzip), Parquet and
Hugging Face datasets saved with ``save_to_disk``.

Every reader yields ``RawBatch`` objects: a batch of records in columnar form (one ``uint8``
array of raw sequence bytes plus ``int64`` offsets, the same for ids), so that no per-record
Python object is created on the hot path. Normalisation and validation against the molecule's
alphabet happen in ``bioprune.engine.data.corpus.normalise``.

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
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bioprune.engine.data.alphabets import WHITESPACE
from bioprune.engine.runtime.errors import UsageError

__all__ = [
    "CorpusError",
    "InputSpec",
    "RawBatch",
    "resolve_input",
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

IS_WHITESPACE = np.zeros(256, dtype=bool)
IS_WHITESPACE[np.frombuffer(WHITESPACE, dtype=np.uint8)] = True
NEWLINE = ord("\n")
HEADER_START = ord(">")


class CorpusError(ValueError, UsageError):
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
            raise unreadable(self, e) from e


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
            raise CorpusError(f"empty split name in {spec!r}",
                              hint="write DIR::SPLIT, e.g. data/hf::train")
    path = Path(os.path.abspath(path_str))
    if not path.exists():
        raise CorpusError("file not found", path=path,
                          hint="check the path (inputs: " + _ACCEPTED + ")")
    if path.is_dir():
        return InputSpec(spec, path, "hf", False, split)
    if split is not None:
        raise CorpusError(f"'{SPLIT_SEP}{split}' given but the path is a file, "
                          "not a dataset directory",
                          path=path,
                          hint="use DIR::SPLIT only with a datasets.DatasetDict saved to disk")
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


def unreadable(spec: InputSpec, exc: BaseException, records_read: int = 0) -> CorpusError:
    """A CorpusError for a file that cannot be read (``records_read`` complete records were
    read before the failure)."""
    if isinstance(exc, CorpusError):
        return exc
    if isinstance(exc, FileNotFoundError):
        problem, hint = "file not found", "check the path"
    elif isinstance(exc, PermissionError):
        problem, hint = "permission denied", "make the file readable"
    elif isinstance(exc, IsADirectoryError):
        problem = "is a directory"
        hint = "pass a file, or a dataset directory saved by save_to_disk"
    elif isinstance(exc, EOFError) or "truncated" in str(exc).lower():
        problem = f"truncated or corrupt compressed file ({exc})"
        hint = "the file ends early; re-download or re-compress it"
    elif isinstance(exc, (gzip.BadGzipFile, zlib.error)):
        problem = f"not a valid gzip file ({exc})"
        hint = "re-compress it with gzip, or drop the .gz extension if it is plain text"
    else:
        problem = f"unreadable file ({type(exc).__name__}: {exc})"
        hint = "check that the file is complete and in the format its extension says"
    err = CorpusError(problem + (f" after record {records_read}" if records_read else ""),
                      path=spec.display, hint=hint)
    # a rank that read part of a file counts from its part: the parallel build renumbers
    err.unnumbered, err.records_read = problem, records_read
    return err


def check_not_gzip(spec: InputSpec) -> None:
    """A plain-named file that is gzip data gets a clear message instead of garbage errors."""
    try:
        with open(spec.path, "rb") as f:
            magic = f.read(2)
    except OSError as e:
        raise unreadable(spec, e) from e
    if magic == b"\x1f\x8b":
        raise CorpusError("the file is gzip-compressed but its name does not end in .gz",
                          path=spec.display, hint="rename it to end in .gz")
