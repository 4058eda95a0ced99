"""The files of a corpus cache directory (all little-endian, raw, no header; shapes from
``corpus.json``), named once for the build that writes them and the store that maps them."""
from __future__ import annotations

from pathlib import Path

import numpy as np

#: corpus.json's "format_version": a cache of another version is rebuilt, never read
FORMAT_VERSION = 1
#: inputs (path, size, mtime), molecule, columns, per-file counts, statistics, build timings
META = "corpus.json"
#: the records --on-invalid skip dropped: file, record number in the file, id, reason
REJECTED = "rejected.tsv"
REJECTED_HEADER = "file\trecord\tid\treason"
#: array name -> (file name, dtype)
ARRAYS = {
    "residues": ("residues.u8", np.uint8),               # normalised residues, concatenated
    "offsets": ("offsets.i64", np.dtype("<i8")),         # [n+1]: record i is residues[o[i]:o[i+1]]
    "lengths": ("lengths.i32", np.dtype("<i4")),         # [n]
    "ids": ("ids.u8", np.uint8),                         # record ids (UTF-8), concatenated
    "id_offsets": ("id_offsets.i64", np.dtype("<i8")),   # [n+1]
}
#: per-rank scratch (shards, rejected rows) inside the temporary build directory
PARTS = ".parts"
#: records per chunk when a shard's offsets or ids are rewritten (bounded memory at any size)
CHUNK_RECORDS = 1 << 21


def shard_dir(build_dir: Path, rank: int) -> Path:
    """Where ``rank`` scans its units to (the arrays of a corpus with offsets from 0)."""
    return build_dir / PARTS / f"r{rank:05d}"


def rejected_rows(build_dir: Path, rank: int) -> Path:
    """``rank``'s rows of rejected.tsv, numbered within their files (concatenated at the end)."""
    return build_dir / PARTS / f"rejected-{rank:05d}.tsv"
