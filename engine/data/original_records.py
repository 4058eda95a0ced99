"""Chosen corpus records written back as the user gave them (``coreset.fasta``): the corpus keeps
only normalised residues (T→U, upper case, no stop) and the header's first word, so the records
are re-read from the original inputs, each keeping its header line and its residue lines byte
for byte. Tables (CSV/TSV/Parquet/datasets) have no header line: their records become ``>id``
and the sequence cell as given.

Streaming, one pass over each input that holds a chosen record, stopping after its last one;
FASTA headers are found with numpy a chunk at a time, so only the chosen records become Python
objects. A record is found by its position in its file (the corpus index less the file's first
index, plus the records ``--on-invalid skip`` dropped before it, from the cache's
``rejected.tsv``), then checked: the file's size and mtime against ``corpus.json`` (a file
changed since the corpus was built is named), and the record's id and normalised residues
against the corpus (a change that kept both), so a wrong record is never written.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from bioprune.engine.data.alphabets import get_alphabet
from bioprune.engine.data.corpus.layout import REJECTED
from bioprune.engine.data.corpus.normalise import RecordProblem, normalise_batch
from bioprune.engine.data.read_input import iter_batches
from bioprune.engine.data.readers import (IS_WHITESPACE, CorpusError, InputSpec, RawBatch,
                                          resolve_input)
from bioprune.engine.io.atomic import atomic_path

_BOM = b"\xef\xbb\xbf"
_CHUNK = 8 << 20
_CHANGED = ("coreset.fasta is copied from the inputs: restore the file that was scored, or "
            "score the new one")


def write_original_fasta(corpus, indices, path) -> int:
    """Write the records ``indices`` (corpus indices, ascending) to FASTA at ``path``, atomically,
    each as it stands in its input; returns the number written. A CorpusError names an input
    that changed since the corpus was built."""
    idx = np.asarray(indices, dtype=np.int64).ravel()
    if idx.size > 1 and not (np.diff(idx) > 0).all():
        raise ValueError("corpus indices must be strictly ascending (the order of the inputs)")
    files = corpus.file_of(idx) if idx.size else np.zeros(0, np.int64)
    count = 0
    with atomic_path(path) as tmp:
        with open(tmp, "wb", buffering=1 << 20) as out:
            for k in np.unique(files).tolist():
                mine = idx[files == k]
                for i, record in _records_of_file(corpus, k, mine):
                    out.write(record if record.endswith(b"\n") else record + b"\n")
                    count += 1
            out.flush()
            os.fsync(out.fileno())
    return count


def _records_of_file(corpus, k: int, indices: np.ndarray) -> Iterator[tuple[int, bytes]]:
    """(corpus index, FASTA record bytes) of ``indices``, all in input ``k``, checked."""
    meta = corpus.stats["inputs"][k]
    spec = _unchanged_input(corpus.paths[k], meta)
    first, _ = corpus.file_range(k)
    numbers = _record_numbers(indices - first, _rejected_numbers(corpus, k))
    if spec.format == "fasta":
        raw = _fasta_records(spec, numbers)
    else:
        raw = _table_records(spec, numbers, corpus.stats.get("column") or "sequence",
                             corpus.stats.get("id_column"))
    got = 0
    for i, number, (rid, residues, record) in zip(indices.tolist(), numbers.tolist(), raw):
        _check_record(corpus, i, spec, number, rid, residues)
        got += 1
        if record is None:   # a table row: the corpus's id as header, the cell as given
            record = b">" + corpus.record_id(i).encode() + b"\n" + residues + b"\n"
        yield i, record
    if got != len(indices):
        raise CorpusError(f"ends before record {int(numbers[got])}: shorter than when the corpus "
                          "was built", path=spec.display, hint=_CHANGED)


def _unchanged_input(path: str, meta: dict) -> InputSpec:
    """The input as it is now, refused when it is gone or its size / mtime differ from the
    build's (``corpus.json``)."""
    try:
        spec = resolve_input(path)
        now = spec.fingerprint()
    except CorpusError as e:
        raise CorpusError(f"cannot re-read it for coreset.fasta ({e.problem})", path=path,
                          hint=_CHANGED) from None
    changed = [key for key in ("size", "mtime_ns", "files") if meta.get(key) != now.get(key)]
    if changed:
        raise CorpusError(f"changed since the corpus was built ({', '.join(changed)} differ)",
                          path=spec.display, hint=_CHANGED)
    return spec


def _rejected_numbers(corpus, k: int) -> np.ndarray:
    """1-based numbers (in input ``k``) of the records ``--on-invalid skip`` dropped, ascending."""
    expected = int(corpus.stats["inputs"][k].get("rejected", 0))
    if not expected:
        return np.zeros(0, np.int64)
    name = corpus.paths[k]
    try:
        lines = (Path(corpus.root) / REJECTED).read_text().splitlines()[1:]
    except OSError as e:
        raise CorpusError(f"cannot read {REJECTED} ({e})", path=corpus.root,
                          hint="delete the corpus cache and build it again") from None
    numbers = np.sort(np.array([int(f[1]) for f in (ln.split("\t") for ln in lines)
                                if f[0] == name], dtype=np.int64))
    if len(numbers) != expected:
        raise CorpusError(f"{REJECTED} lists {len(numbers)} dropped records of {name}, "
                          f"corpus.json {expected}", path=corpus.root,
                          hint="delete the corpus cache and build it again")
    return numbers


def _record_numbers(kept: np.ndarray, rejected: np.ndarray) -> np.ndarray:
    """1-based record numbers in the file of the 0-based positions ``kept`` among its kept
    records: the q-th kept record is number q + 1 + (rejected records before it). Rejected
    record R_j has R_j - j - 1 kept records before it (j 0-based), a non-decreasing sequence, so
    one searchsorted counts the rejected ones before each kept record."""
    before = rejected - np.arange(1, len(rejected) + 1)
    return kept + 1 + np.searchsorted(before, kept + 1, side="left")


def _fasta_records(spec: InputSpec, numbers: np.ndarray
                   ) -> Iterator[tuple[str, bytes, bytes]]:
    """(id, residue bytes without newlines, the record's bytes) of the records ``numbers``
    (1-based, ascending) of a FASTA file: from the '>' of its header to the next header (or the
    end), exactly as in the file. Records are delimited as the corpus build does: a '>' at the
    start of a line opens one; a byte-order mark at the start of the file is skipped."""
    opener = gzip.open if spec.compressed else open
    pos, seen, buf, first = 0, 0, b"", True   # pos: next wanted; seen: records passed
    with opener(spec.path, "rb") as f:
        while pos < len(numbers):
            chunk = f.read(_CHUNK)
            if first and chunk.startswith(_BOM):
                chunk = chunk[len(_BOM):]
            first = False
            buf += chunk
            a = np.frombuffer(buf, dtype=np.uint8)
            gt = np.flatnonzero(a == ord(">"))
            starts = gt[(gt == 0) | (a[gt - 1] == ord("\n"))]   # header lines ('>' opens a line)
            # complete records in buf: all at the end of the file, else all but the last
            done = len(starts) if not chunk else max(len(starts) - 1, 0)
            ends = np.append(starts[1:], len(buf))
            # the wanted numbers among records seen+1 .. seen+done
            stop = int(np.searchsorted(numbers, seen + done, side="right"))
            for j in (numbers[pos:stop] - seen - 1).tolist():
                record = buf[starts[j]:ends[j]]
                header, _, body = record.partition(b"\n")
                words = np.frombuffer(header[1:], dtype=np.uint8)
                cut = np.flatnonzero(IS_WHITESPACE[words])
                rid = header[1:1 + (int(cut[0]) if cut.size else len(words))]
                yield rid.decode("utf-8", "replace"), body.replace(b"\n", b""), record
            pos, seen = stop, seen + done
            if not chunk:
                return
            if done < len(starts):
                buf = buf[starts[done]:]   # the record still being read


def _table_records(spec: InputSpec, numbers: np.ndarray, column: str, id_column
                   ) -> Iterator[tuple[str, bytes, None]]:
    """(id or '', the sequence cell's bytes, None) of rows ``numbers`` (1-based, ascending) of a
    table input, read by the corpus's own reader."""
    pos, seen = 0, 0
    for batch in iter_batches(spec, column, id_column):
        stop = int(np.searchsorted(numbers, seen + len(batch), side="right"))
        for j in (numbers[pos:stop] - seen - 1).tolist():
            a, b = int(batch.offsets[j]), int(batch.offsets[j + 1])
            yield batch.record_id(j) or "", batch.data[a:b].tobytes(), None
        pos, seen = stop, seen + len(batch)
        if pos == len(numbers):
            return


def _check_record(corpus, i: int, spec: InputSpec, number: int, rid: str,
                  residues: bytes) -> None:
    """The re-read record must be the corpus's record ``i``: the same id (when the input has
    one) and the same residues once normalised as the build does."""
    data = np.frombuffer(residues, dtype=np.uint8)
    try:
        norm = normalise_batch(RawBatch(data, np.array([0, len(data)], np.int64)),
                               get_alphabet(corpus.molecule))[0]
        same = np.array_equal(norm, corpus.residues(i))
    except RecordProblem:
        same = False
    if (rid and rid != corpus.record_id(i)) or not same:
        raise CorpusError(f"record {number} (id {rid!r}) is not the record the corpus holds "
                          f"there (id {corpus.record_id(i)!r}, corpus index {i}): the file "
                          "changed since the corpus was built", path=spec.display,
                          hint=_CHANGED)
