"""The corpus built by every rank: each scans its share of the inputs, one exchange of small
per-unit summaries gives every rank the corpus index, and each writes its share of the final
arrays at its offsets. The result is byte for byte the single-process build
(:func:`bioprune.engine.data.corpus_build._build`): the same arrays, ids, statistics,
rejected.tsv and errors.

Why: one core builds about 0.5 M records/s, so 10^9 records take half an hour while every other
rank of the job idles in a collective. Scanning is embarrassingly parallel once the inputs are
cut into units (:mod:`.corpus_units`); what is sequential is only the corpus index, and that
needs a few numbers per unit, not the records.

Steps (every step ends in one collective that turns a failure on any rank into the same error
on every rank, so no rank hangs and a failed build leaves nothing behind):

1. the leader of each filesystem (rank 0, or one rank per node with ``node_local``) checks its
   cache: all hold the corpus → reuse it; one holds another corpus → the usual error;
2. rank 0 resolves the inputs, records their identity (size, mtime) and cuts them into units,
   a contiguous run per rank (:func:`.corpus_units.plan_units`); every rank gets the plan;
3. each rank scans its units into a shard directory inside the build's temporary directory:
   the corpus arrays with offsets from 0 (memory: one read chunk, whatever the shard's size);
4. all-gather of the unit summaries; every rank runs the same merge: errors in corpus order
   exactly as the single-process build raises them, else every unit's corpus index, residue
   offset and id offset (a second small all-gather when FASTA ranges hold records without an
   id, whose generated ``<file>:<record number>`` ids need their record numbers first);
5. the leader sizes the final files; each rank writes its shard into them at its offsets
   (``copy_file_range`` for residues, lengths and ids; offsets shifted in chunks) and its
   rejected rows with file record numbers;
6. ``node_local`` with several nodes: the node leaders broadcast each rank's byte ranges to the
   other nodes, so every node holds the whole corpus;
7. each leader writes rejected.tsv and corpus.json, checks that no input changed, and renames
   the temporary directory onto the cache directory (atomic; another node or job that was
   faster with the same inputs wins).

Node-local caches (``node_local``): for clusters without a fast shared filesystem. ``cache_dir``
names a directory on each node's own disk (the same path on every node). Assumed: every input
is readable at its path from every rank (a slow shared mount is enough: each input byte is read
once by one rank), and the ranks of one node see the same local disk. Nodes are told apart by
host name; ``BIOPRUNE_CORPUS_SIMULATE_NODES=K`` makes groups of K consecutive ranks pretend to be
separate nodes with cache directories ``DIR@simN`` (tests on one machine).

Concurrent writes of disjoint byte ranges of one file from several ranks (step 5) are what MPI-IO
does on Lustre, GPFS, BeeGFS and local disks; old NFS clients can corrupt partial pages, use
``node_local`` there.
"""
from __future__ import annotations

import os
import shutil
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bioprune.engine.data.alphabets import get_alphabet
from bioprune.engine.data.corpus_build import (_FILES, ON_INVALID, REJECTED, REJECTED_HEADER,
                                               _build_info, _publish, _rejected_row)
from bioprune.engine.data.corpus_cache import (META, as_paths, cached, describe_mismatch,
                                               input_identity)
from bioprune.engine.data.corpus_units import (MIN_UNIT_BYTES, Merged, Unit, merge_units,
                                               plan_units, scan_units, sum_hists)
from bioprune.engine.data.read_fasta import _ranges
from bioprune.engine.data.readers import CorpusError, resolve_input
from bioprune.engine.io.atomic import write_json
from bioprune.engine.runtime.collectives import together

SIMULATE_NODES_ENV = "BIOPRUNE_CORPUS_SIMULATE_NODES"
PARTS = ".parts"          # per-rank scratch inside the temporary build directory
CHUNK_RECORDS = 1 << 21   # records per chunk when offsets are shifted
COPY_BYTES = 64 << 20     # bytes per broadcast between nodes


# ------------------------------------------------------------------------- collectives


def _together(comm, fn, *args, **kwargs):
    return together(comm, fn, *args, what="the corpus build", **kwargs)


def _from_rank0(comm, fn, *args):
    """``fn(*args)`` computed on rank 0 and handed to every rank (errors shared)."""
    out = _together(comm, lambda: fn(*args) if comm.rank == 0 else None)
    return comm.allgather_object(out)[0] if comm.world > 1 else out


# ------------------------------------------------------------------------- who writes where


@dataclass
class _Layout:
    """Ranks that share a filesystem form a group; the lowest rank of a group leads it (checks
    the cache, creates and publishes the temporary directory)."""

    rank: int
    world: int
    groups: list            # list of rank lists, in order of their lowest rank
    group: int              # this rank's group
    cache_dir: Path         # this rank's cache directory

    @property
    def leaders(self) -> list[int]:
        return [g[0] for g in self.groups]

    @property
    def leader(self) -> bool:
        return self.rank == self.groups[self.group][0]

    def leader_of(self, rank: int) -> int:
        return next(g[0] for g in self.groups if rank in g)


def _layout(comm, cache_dir: Path, node_local: bool) -> _Layout:
    if not node_local:
        return _Layout(comm.rank, comm.world, [list(range(comm.world))], 0, cache_dir)
    sim = int(os.environ.get(SIMULATE_NODES_ENV, "0") or 0)
    name = f"sim{comm.rank // sim}" if sim > 0 else socket.gethostname()
    names = comm.allgather_object(name)
    order = list(dict.fromkeys(names))
    groups = [[r for r in range(comm.world) if names[r] == nm] for nm in order]
    if sim > 0:
        cache_dir = cache_dir.with_name(f"{cache_dir.name}@{name}")
    return _Layout(comm.rank, comm.world, groups, order.index(name), cache_dir)


# ------------------------------------------------------------------------- the build


def build_or_reuse(paths, molecule: str, cache_dir, column: str = "sequence",
                   id_column: str | None = None, on_invalid: str = "error", *,
                   node_local: bool = False, chunk_bytes: int = 8 << 20,
                   batch_rows: int = 65536, min_unit_bytes: int = MIN_UNIT_BYTES,
                   units_per_rank: int = 1, comm=None) -> Path:
    """Collective over the default process group (or one process): make sure this rank's cache
    directory holds the corpus of ``paths``, building it with every rank if needed. Returns the
    directory (with ``node_local``, this node's)."""
    from bioprune.engine.runtime.collectives import Comm

    comm = comm or Comm()
    lay = _layout(comm, Path(cache_dir).absolute(), node_local)
    args = (paths, molecule, lay.cache_dir, column, id_column, on_invalid)
    have = _together(comm, lambda: cached(*args) if lay.leader else None)
    have = comm.allgather_object(have) if comm.world > 1 else [have]
    if all(have[r] for r in lay.leaders):
        return lay.cache_dir
    t0 = time.perf_counter()
    plan = _from_rank0(comm, _plan, paths, molecule, column, id_column, on_invalid, comm.world,
                       units_per_rank, min_unit_bytes)
    tmp = _together(comm, _make_tmp, lay)
    tmps = comm.allgather_object(tmp) if comm.world > 1 else [tmp]
    tmp = Path(tmps[lay.groups[lay.group][0]])
    try:
        _build(comm, lay, plan, tmp, column, id_column, on_invalid, chunk_bytes, batch_rows, t0)
    except BaseException:
        if lay.leader:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return lay.cache_dir


def _plan(paths, molecule, column, id_column, on_invalid, world, units_per_rank,
          min_unit_bytes) -> dict:
    if on_invalid not in ON_INVALID:
        raise CorpusError(f"on_invalid must be one of {ON_INVALID}, not {on_invalid!r}")
    alpha = get_alphabet(molecule)
    specs = [resolve_input(p) for p in as_paths(paths)]
    identity = input_identity(specs, alpha.name, column, id_column, on_invalid)
    sizes = [int(f["size"]) for f in identity["inputs"]]
    units = plan_units(specs, sizes, world, units_per_rank=units_per_rank,
                       min_unit_bytes=min_unit_bytes)
    return {"molecule": alpha.name, "specs": specs, "identity": identity, "units": units}


def _make_tmp(lay: _Layout) -> str | None:
    if not lay.leader:
        return None
    cache_dir = lay.cache_dir
    if cache_dir.exists() and not cache_dir.is_dir():
        raise CorpusError("corpus cache path exists and is not a directory", path=cache_dir,
                          hint="pick another cache dir")
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir.parent / f".{cache_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return str(tmp)


def _visible(tmp: Path, rank: int) -> None:
    if not tmp.is_dir():
        raise CorpusError(f"rank {rank} does not see the directory the corpus is being built in "
                          f"({tmp})", hint="every rank must see the corpus cache (a shared "
                          "filesystem); without one, give a directory on each node's own disk "
                          "(--corpus-cache-local)")


def _build(comm, lay: _Layout, plan: dict, tmp: Path, column, id_column, on_invalid,
           chunk_bytes, batch_rows, t0) -> None:
    _together(comm, _visible, tmp, comm.rank)
    alpha = get_alphabet(plan["molecule"])
    specs, units = plan["specs"], plan["units"]
    mine = [u for u in units if u.owner == comm.rank]
    shard = tmp / PARTS / f"r{comm.rank:05d}"
    phases = {}
    t = time.perf_counter()
    summaries, hist, scan_s = _together(comm, scan_units, mine, specs, alpha, shard, column,
                                        id_column, on_invalid, chunk_bytes, batch_rows)
    phases["scan"] = time.perf_counter() - t
    t = time.perf_counter()
    nz = np.flatnonzero(hist)
    gathered = comm.allgather_object((summaries, nz, hist[nz], scan_s))
    scanned = [(sum(x.seen for x in g[0]), g[3]) for g in gathered]   # (records, times) a rank
    every: list = [None] * len(units)
    hists = [np.zeros(1, np.int64)]
    for sums, idx, cnt, _ in gathered:
        for s in sums:
            every[s.unit] = s
        h = np.zeros(int(idx[-1]) + 1 if idx.size else 1, np.int64)
        h[idx] = cnt
        hists.append(h)
    hist = sum_hists(hists)
    merge = (units, every, specs, plan["identity"], alpha, column, id_column, on_invalid, hist)
    merged = _together(comm, merge_units, *merge)
    if any(s.deferred for s in every):
        extra = _together(comm, _generated_bytes, shard, units, merged, specs)
        generated = np.sum(comm.allgather_object(extra), axis=0)
        merged = _together(comm, merge_units, *merge, generated)
    phases["exchange"] = time.perf_counter() - t
    t = time.perf_counter()
    _together(comm, _allocate, lay, tmp, merged)
    part = _together(comm, _assemble, tmp, shard, mine, units, merged, specs, comm.rank)
    phases["assemble"] = time.perf_counter() - t
    part_sizes = comm.allgather_object(part) if comm.world > 1 else [part]
    if len(lay.groups) > 1:
        t = time.perf_counter()
        _between_nodes(comm, lay, tmp, units, merged, part_sizes)
        phases["between_nodes"] = time.perf_counter() - t
    seconds = time.perf_counter() - t0
    info = _build_info(seconds, sum(f["size"] for f in merged.meta["inputs"]),
                       merged.meta["n_records"], ranks=comm.world, nodes=len(lay.groups),
                       units=len(units), phases_s={k: round(v, 4) for k, v in phases.items()},
                       scan_per_rank=_rates(scanned))
    info = comm.allgather_object(info)[0] if comm.world > 1 else info
    _together(comm, _finish, lay, tmp, plan, merged, info, on_invalid, column, id_column)


def _rates(scanned) -> dict:
    """The ranks' scan times and rates (records read per second of wall time, and per CPU
    second: the rate a rank with a core of its own reaches), for the benchmark."""
    out = {"seconds_max": round(max(t["scan"] for _, t in scanned), 4)}
    for key, name in (("scan", "records_per_s"), ("scan_cpu", "records_per_cpu_s")):
        rates = [n / t[key] for n, t in scanned if n and t[key] > 0]
        out[name + "_min"] = round(min(rates), 1) if rates else None
        out[name + "_max"] = round(max(rates), 1) if rates else None
    return out


# ------------------------------------------------------------------------- deferred ids

_POW10 = 10 ** np.arange(1, 19, dtype=np.int64)


def _deferred(shard: Path) -> np.ndarray:
    """(unit, shard record index, local record number) of the records whose generated id waits
    for their unit's first record number: memory-mapped, in shard order."""
    p = shard / "deferred.i64"
    if not p.exists() or p.stat().st_size == 0:
        return np.zeros((0, 3), np.int64)
    return np.memmap(p, dtype="<i8", mode="r").reshape(-1, 3)


def _generated_bytes(shard: Path, units: list[Unit], merged: Merged, specs) -> np.ndarray:
    """Bytes per unit of this rank's generated ids '<name>:<record number>'."""
    out = np.zeros(len(units), np.int64)
    d = _deferred(shard)
    name_len = np.array([len(specs[x.file].name.encode()) for x in units], np.int64)
    for c in range(0, len(d), CHUNK_RECORDS):
        rows = np.asarray(d[c:c + CHUNK_RECORDS])
        u = rows[:, 0]
        num = merged.file_base[u] + rows[:, 2] + 1
        digits = np.searchsorted(_POW10, num, "right") + 1
        out += np.bincount(u, weights=name_len[u] + 1 + digits,
                           minlength=len(units)).astype(np.int64)
    return out


def _ids_with_generated(ids: np.ndarray, ioff: np.ndarray, d: np.ndarray, units, merged,
                        specs) -> tuple[np.ndarray, np.ndarray]:
    """Ids of a run of records (bytes ``ids``, offsets ``ioff`` from 0) with the empty ones at
    ``d`` (rows of :func:`_deferred`, indices local to the run) filled in."""
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
    out[_ranges(new_off[:-1][keep], old_len[keep])] = ids[_ranges(ioff[:-1][keep], old_len[keep])]
    out[_ranges(new_off[:-1][at], new_len[at])] = np.frombuffer(b"".join(text), np.uint8)
    return out, new_off


# ------------------------------------------------------------------------- assembly


def _allocate(lay: _Layout, tmp: Path, merged: Merged) -> None:
    """The leader creates the final files at their final sizes (zeros: offsets[0] is 0)."""
    if not lay.leader:
        return
    m = merged.meta
    n = m["n_records"]
    sizes = {"residues": m["total_residues"], "offsets": 8 * (n + 1), "lengths": 4 * n,
             "ids": m["id_bytes"], "id_offsets": 8 * (n + 1)}
    for key, (fn, _) in _FILES.items():
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


def _segment(merged: Merged, units: list[Unit], rank: int) -> dict:
    """This rank's byte ranges (offset, length) in each final file."""
    own = [u.index for u in units if u.owner == rank]
    if not own:
        return {key: (0, 0) for key in _FILES}
    a, b = own[0], own[-1] + 1
    n0, n1 = int(merged.index[a]), int(merged.index[b])
    r0, r1 = int(merged.residue[a]), int(merged.residue[b])
    i0, i1 = int(merged.id_offset[a]), int(merged.id_offset[b])
    return {"residues": (r0, r1 - r0), "offsets": (8 * (n0 + 1), 8 * (n1 - n0)),
            "lengths": (4 * n0, 4 * (n1 - n0)), "ids": (i0, i1 - i0),
            "id_offsets": (8 * (n0 + 1), 8 * (n1 - n0))}


def _assemble(tmp: Path, shard: Path, mine: list[Unit], units: list[Unit], merged: Merged,
              specs, rank: int) -> int:
    """Write this rank's shard into the final files at its offsets, and its rejected rows (with
    their record numbers in their files) into its part of rejected.tsv. Returns that part's
    size in bytes."""
    part = tmp / PARTS / f"rejected-{rank:05d}.tsv"
    _rejected_part(shard, part, units, merged, specs)
    if not mine:
        return part.stat().st_size
    seg = _segment(merged, units, rank)
    n = seg["lengths"][1] // 4
    dst = {key: os.open(tmp / fn, os.O_WRONLY) for key, (fn, _) in _FILES.items()}
    src = {key: os.open(shard / fn, os.O_RDONLY) for key, (fn, _) in _FILES.items()}
    try:
        for key in ("residues", "lengths"):
            _copy(src[key], dst[key], seg[key][1], 0, seg[key][0])
        _shifted(shard / _FILES["offsets"][0], dst["offsets"], n, seg["residues"][0],
                 seg["offsets"][0])
        d = _deferred(shard)
        if not d.size:
            _copy(src["ids"], dst["ids"], seg["ids"][1], 0, seg["ids"][0])
            _shifted(shard / _FILES["id_offsets"][0], dst["id_offsets"], n, seg["ids"][0],
                     seg["id_offsets"][0])
        else:
            _ids_deferred(shard, dst, n, d, seg, units, merged, specs)
        for fd in dst.values():
            os.fsync(fd)
    finally:
        for fd in (*dst.values(), *src.values()):
            os.close(fd)
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


def _ids_deferred(shard, dst, n, d, seg, units, merged, specs) -> None:
    """ids and id_offsets of a shard whose records include ids generated only now."""
    ioff = np.memmap(shard / _FILES["id_offsets"][0], dtype="<i8", mode="r", shape=(n + 1,))
    total = int(ioff[-1])
    ids = (np.memmap(shard / _FILES["ids"][0], dtype=np.uint8, mode="r", shape=(total,))
           if total else np.zeros(0, np.uint8))
    cursor, at = seg["ids"][0], seg["id_offsets"][0]
    for c in range(0, n, CHUNK_RECORDS):
        e = min(n, c + CHUNK_RECORDS)
        lo, hi = np.searchsorted(d[:, 1], [c, e])
        rows = np.array(d[lo:hi])
        rows[:, 1] -= c
        local = np.asarray(ioff[c:e + 1]) - int(ioff[c])
        data, off = _ids_with_generated(np.asarray(ids[int(ioff[c]):int(ioff[e])]), local, rows,
                                        units, merged, specs)
        os.pwrite(dst["ids"], data.tobytes(), cursor)
        os.pwrite(dst["id_offsets"], (off[1:] + cursor).astype("<i8").tobytes(), at + 8 * c)
        cursor += int(off[-1])
    if cursor != seg["ids"][0] + seg["ids"][1]:
        raise RuntimeError("corpus build: generated ids do not fill their planned bytes")


def _rejected_part(shard: Path, part: Path, units, merged: Merged, specs) -> None:
    """The shard's bad records as rows of rejected.tsv (file, record number in the file, id,
    reason); the shard holds (unit, record number in the unit, id, reason)."""
    src = shard / "rejected.part"
    with open(part, "w", encoding="utf-8") as out:
        if not src.exists():
            return
        with open(src, encoding="utf-8") as f:
            for line in f:
                u, r, rid, why = line.rstrip("\n").split("\t", 3)
                u = int(u)
                out.write(_rejected_row({"file": specs[units[u].file].display,
                                         "record": int(merged.file_base[u]) + int(r),
                                         "id": rid, "reason": why}) + "\n")


# ------------------------------------------------------------------------- between nodes


def _between_nodes(comm, lay: _Layout, tmp: Path, units, merged: Merged, part_sizes) -> None:
    """Every node's leader broadcasts the byte ranges its node's ranks wrote to the leaders of
    the other nodes (one process group of the leaders), so each node holds the whole corpus."""
    import torch
    import torch.distributed as dist

    group = dist.new_group(lay.leaders)     # collective over all ranks
    if not lay.leader:
        _together(comm, lambda: None)
        return

    def work():
        failure = None
        files = {key: tmp / fn for key, (fn, _) in _FILES.items()}
        for r in range(lay.world):
            src = lay.leader_of(r)
            seg = _segment(merged, units, r)
            seg["part"] = (0, part_sizes[r])
            files["part"] = tmp / PARTS / f"rejected-{r:05d}.tsv"
            for key, (at, length) in seg.items():
                if not length:
                    continue
                fd = os.open(files[key], os.O_RDONLY if src == lay.rank else
                             os.O_WRONLY | os.O_CREAT, 0o644)
                try:
                    for c in range(0, length, COPY_BYTES):
                        m = min(COPY_BYTES, length - c)
                        if src == lay.rank:
                            buf = bytearray(os.pread(fd, m, at + c).ljust(m, b"\0"))
                            t = torch.frombuffer(buf, dtype=torch.uint8)
                        else:
                            t = torch.empty(m, dtype=torch.uint8)
                        t = t.to(comm.device)
                        dist.broadcast(t, src=src, group=group)
                        if src != lay.rank and failure is None:
                            try:
                                os.pwrite(fd, t.cpu().numpy().tobytes(), at + c)
                            except OSError as e:
                                failure = e
                    if src != lay.rank:
                        os.fsync(fd)
                finally:
                    os.close(fd)
        if failure is not None:
            raise failure

    _together(comm, work)


# ------------------------------------------------------------------------- finish


def _finish(lay: _Layout, tmp: Path, plan: dict, merged: Merged, info: dict, on_invalid,
            column, id_column) -> None:
    """The leader: rejected.tsv, corpus.json, the inputs unchanged, then the atomic rename."""
    if not lay.leader:
        return
    if on_invalid == "skip":
        with open(tmp / REJECTED, "wb") as out:
            out.write((REJECTED_HEADER + "\n").encode())
            for r in range(lay.world):
                with open(tmp / PARTS / f"rejected-{r:05d}.tsv", "rb") as f:
                    shutil.copyfileobj(f, out, 16 << 20)
            out.flush()
            os.fsync(out.fileno())
    shutil.rmtree(tmp / PARTS)
    write_json(tmp / META, {**merged.meta, "build": info})
    identity = plan["identity"]
    after = input_identity(plan["specs"], plan["molecule"], column, id_column, on_invalid)
    if after != identity:
        raise CorpusError("an input changed while the corpus was being built: "
                          + describe_mismatch(identity, after), hint="build again")
    _publish(tmp, lay.cache_dir, identity)
