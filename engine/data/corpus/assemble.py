"""Assembly: each rank writes its shard into the final files at the offsets the merge gave
its units (``copy_file_range`` for residues, lengths and ids; offsets shifted a chunk at a
time; ids generated after the exchange filled in) and its rejected rows, numbered within their
files. A lone rank's shard already is the final arrays: it is renamed into place."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from bioprune.engine.data.corpus.generated_ids import ids_with_generated, read_deferred
from bioprune.engine.data.corpus.invalid import rejected_row
from bioprune.engine.data.corpus.layout import ARRAYS, CHUNK_RECORDS, rejected_rows
from bioprune.engine.data.corpus.merge import Merged
from bioprune.engine.data.corpus.scan import REJECTED_PART
from bioprune.engine.data.corpus.units import Unit

COPY_BYTES = 64 << 20     # bytes per plain copy (or per broadcast between nodes)


def allocate(tmp: Path, merged: Merged) -> None:
    """The final files at their final sizes (zeros: offsets[0] is 0), made by the leader."""
    m = merged.meta
    n = m["n_records"]
    sizes = {"residues": m["total_residues"], "offsets": 8 * (n + 1), "lengths": 4 * n,
             "ids": m["id_bytes"], "id_offsets": 8 * (n + 1)}
    for key, (fn, _) in ARRAYS.items():
        with open(tmp / fn, "wb") as f:
            f.truncate(sizes[key])


def _copy(src: int, dst: int, count: int, src_off: int, dst_off: int) -> None:
    """``count`` bytes from ``src`` at ``src_off`` to ``dst`` at ``dst_off``: in the kernel where
    the filesystem can (no user-space copy; a reflink on XFS/btrfs), else through a buffer."""
    while count > 0:
        try:
            k = os.copy_file_range(src, dst, count, src_off, dst_off)
        except (AttributeError, OSError):
            k = 0
        if k <= 0:      # unsupported here (another filesystem, an old kernel): plain copy
            data = os.pread(src, min(count, COPY_BYTES), src_off)
            if not data:
                raise OSError(f"short read while assembling the corpus ({count} bytes left)")
            k = os.pwrite(dst, data, dst_off)
        count, src_off, dst_off = count - k, src_off + k, dst_off + k


def segment(merged: Merged, units: list[Unit], rank: int) -> dict:
    """This rank's byte ranges (offset, length) in each final file."""
    own = [u.index for u in units if u.owner == rank]
    if not own:
        return {key: (0, 0) for key in ARRAYS}
    a, b = own[0], own[-1] + 1
    n0, n1 = int(merged.index[a]), int(merged.index[b])
    r0, r1 = int(merged.residue[a]), int(merged.residue[b])
    i0, i1 = int(merged.id_offset[a]), int(merged.id_offset[b])
    return {"residues": (r0, r1 - r0), "offsets": (8 * (n0 + 1), 8 * (n1 - n0)),
            "lengths": (4 * n0, 4 * (n1 - n0)), "ids": (i0, i1 - i0),
            "id_offsets": (8 * (n0 + 1), 8 * (n1 - n0))}


def assemble_shard(tmp: Path, shard: Path, mine: list[Unit], units: list[Unit], merged: Merged,
                   specs, rank: int) -> int:
    """Write this rank's shard into the final files at its offsets, and its rejected rows (with
    their record numbers in their files) into its part of rejected.tsv. Returns that part's
    size in bytes."""
    part = rejected_rows(tmp, rank)
    _rejected_part(shard, part, units, merged, specs)
    if not mine:
        return part.stat().st_size
    seg = segment(merged, units, rank)
    n = seg["lengths"][1] // 4
    dst = {key: os.open(tmp / fn, os.O_WRONLY) for key, (fn, _) in ARRAYS.items()}
    src = {key: os.open(shard / fn, os.O_RDONLY) for key, (fn, _) in ARRAYS.items()}
    try:
        for key in ("residues", "lengths"):
            _copy(src[key], dst[key], seg[key][1], 0, seg[key][0])
        _shifted(shard / ARRAYS["offsets"][0], dst["offsets"], n, seg["residues"][0],
                 seg["offsets"][0])
        d = read_deferred(shard)
        if not d.size:
            _copy(src["ids"], dst["ids"], seg["ids"][1], 0, seg["ids"][0])
            _shifted(shard / ARRAYS["id_offsets"][0], dst["id_offsets"], n, seg["ids"][0],
                     seg["id_offsets"][0])
        else:
            _write_ids_with_generated(shard, dst, n, d, seg, units, merged, specs)
        for fd in dst.values():
            os.fsync(fd)
    finally:
        for fd in (*dst.values(), *src.values()):
            os.close(fd)
    return part.stat().st_size


def adopt_lone_shard(tmp: Path, shard: Path, units: list[Unit], merged: Merged, specs) -> int:
    """The assembly of a build with one rank whose ids were all known while scanning: its shard
    holds every unit in corpus order with offsets from 0, which is the final arrays byte for
    byte, so they are synced and renamed into place instead of copied. Returns the size of the
    rank's part of rejected.tsv, as :func:`assemble_shard` does."""
    part = rejected_rows(tmp, 0)
    _rejected_part(shard, part, units, merged, specs)
    for fn, _ in ARRAYS.values():
        fd = os.open(shard / fn, os.O_RDONLY)
        try:
            os.fsync(fd)     # scanned unsynced (scratch until now)
        finally:
            os.close(fd)
        os.rename(shard / fn, tmp / fn)
    return part.stat().st_size


def _shifted(src: Path, dst: int, n: int, base: int, at: int) -> None:
    """offsets[1:n+1] of a shard, plus ``base``, written at byte ``at`` of ``dst``, a chunk at a
    time (read, not memory-mapped: mapped pages would count in the rank's RSS)."""
    fd = os.open(src, os.O_RDONLY)
    try:
        for c in range(0, n, CHUNK_RECORDS):
            e = min(n, c + CHUNK_RECORDS)
            off = np.frombuffer(os.pread(fd, 8 * (e - c), 8 * (c + 1)), dtype="<i8")
            os.pwrite(dst, (off + base).astype("<i8").tobytes(), at + 8 * c)
    finally:
        os.close(fd)


def _write_ids_with_generated(shard, dst, n, d, seg, units, merged, specs) -> None:
    """ids and id_offsets of a shard whose records include ids generated only now."""
    ioff = np.memmap(shard / ARRAYS["id_offsets"][0], dtype="<i8", mode="r", shape=(n + 1,))
    total = int(ioff[-1])
    ids = (np.memmap(shard / ARRAYS["ids"][0], dtype=np.uint8, mode="r", shape=(total,))
           if total else np.zeros(0, np.uint8))
    cursor, at = seg["ids"][0], seg["id_offsets"][0]
    for c in range(0, n, CHUNK_RECORDS):
        e = min(n, c + CHUNK_RECORDS)
        lo, hi = np.searchsorted(d[:, 1], [c, e])
        rows = np.array(d[lo:hi])
        rows[:, 1] -= c
        local = np.asarray(ioff[c:e + 1]) - int(ioff[c])
        data, off = ids_with_generated(np.asarray(ids[int(ioff[c]):int(ioff[e])]), local, rows,
                                        units, merged, specs)
        os.pwrite(dst["ids"], data.tobytes(), cursor)
        os.pwrite(dst["id_offsets"], (off[1:] + cursor).astype("<i8").tobytes(), at + 8 * c)
        cursor += int(off[-1])
    if cursor != seg["ids"][0] + seg["ids"][1]:
        raise RuntimeError("corpus build: generated ids do not fill their planned bytes")


def _rejected_part(shard: Path, part: Path, units, merged: Merged, specs) -> None:
    """The shard's bad records as rows of rejected.tsv (file, record number in the file, id,
    reason); the shard holds (unit, record number in the unit, id, reason)."""
    src = shard / REJECTED_PART
    with open(part, "w", encoding="utf-8") as out:
        if not src.exists():
            return
        with open(src, encoding="utf-8") as f:
            for line in f:
                u, r, rid, why = line.rstrip("\n").split("\t", 3)
                u = int(u)
                out.write(rejected_row({"file": specs[units[u].file].display,
                                         "record": int(merged.file_base[u]) + int(r),
                                         "id": rid, "reason": why}) + "\n")


