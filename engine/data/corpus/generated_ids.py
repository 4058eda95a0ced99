"""Record ids a build makes up: ``<file name>:<record number>`` (1-based, counting rejected
records) for a record without one. A rank scanning a FASTA byte range after the file's first
does not know its records' numbers until the exchange, so it leaves those ids empty and lists
them (``deferred.i64`` in its shard); the assembly writes them once the numbers are known."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bioprune.engine.data.corpus.layout import CHUNK_RECORDS
from bioprune.engine.data.read_fasta import range_indices
from bioprune.engine.data.readers import RawBatch

DEFERRED = "deferred.i64"     # in a shard: (unit, shard record index, local record number)


def _generated_ids(name: str, start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """ids '<name>:<record number>' for records start+1 .. start+n (1-based)."""
    parts = [f"{name}:{k}".encode() for k in range(start + 1, start + n + 1)]
    lens = np.fromiter((len(p) for p in parts), dtype=np.int64, count=n)
    offs = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lens, out=offs[1:])
    return np.frombuffer(b"".join(parts), dtype=np.uint8), offs


def fill_ids(batch: RawBatch, name: str, start: int) -> tuple[np.ndarray, np.ndarray]:
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



def deferred_ids(batch, n: int):
    """The ids a FASTA batch carries (an empty one waits for its generated id)."""
    if batch.ids is None:
        return np.zeros(0, np.uint8), np.zeros(n + 1, np.int64)
    return batch.ids, batch.id_offsets



_POW10 = 10 ** np.arange(1, 19, dtype=np.int64)


def read_deferred(shard: Path) -> np.ndarray:
    """(unit, shard record index, local record number) of the records whose generated id waits
    for their unit's first record number: memory-mapped, in shard order."""
    p = shard / DEFERRED
    if not p.exists() or p.stat().st_size == 0:
        return np.zeros((0, 3), np.int64)
    return np.memmap(p, dtype="<i8", mode="r").reshape(-1, 3)


def generated_id_bytes(shard: Path, units: list, merged, specs) -> np.ndarray:
    """Bytes per unit of this rank's generated ids '<name>:<record number>'."""
    out = np.zeros(len(units), np.int64)
    d = read_deferred(shard)
    name_len = np.array([len(specs[x.file].name.encode()) for x in units], np.int64)
    for c in range(0, len(d), CHUNK_RECORDS):
        rows = np.asarray(d[c:c + CHUNK_RECORDS])
        u = rows[:, 0]
        num = merged.file_base[u] + rows[:, 2] + 1
        digits = np.searchsorted(_POW10, num, "right") + 1
        out += np.bincount(u, weights=name_len[u] + 1 + digits,
                           minlength=len(units)).astype(np.int64)
    return out


def ids_with_generated(ids: np.ndarray, ioff: np.ndarray, d: np.ndarray, units, merged,
                        specs) -> tuple[np.ndarray, np.ndarray]:
    """Ids of a run of records (bytes ``ids``, offsets ``ioff`` from 0) with the empty ones at
    ``d`` (rows of :func:`read_deferred`, indices local to the run) filled in."""
    old_len = np.diff(ioff)
    new_len = old_len.copy()
    text = [f"{specs[units[u].file].name}:{merged.file_base[u] + r + 1}".encode()
            for u, r in zip(d[:, 0].tolist(), d[:, 2].tolist())]
    at = d[:, 1]
    new_len[at] = [len(x) for x in text]
    new_off = np.zeros(len(new_len) + 1, np.int64)
    np.cumsum(new_len, out=new_off[1:])
    out = np.empty(int(new_off[-1]), np.uint8)
    keep = np.ones(len(old_len), bool)
    keep[at] = False
    out[range_indices(new_off[:-1][keep], old_len[keep])] = \
        ids[range_indices(ioff[:-1][keep], old_len[keep])]
    out[range_indices(new_off[:-1][at], new_len[at])] = np.frombuffer(b"".join(text), np.uint8)
    return out, new_off

