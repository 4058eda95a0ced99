"""The corpus build, one code path for any number of ranks: each rank scans its share of the
inputs, one exchange of small per-unit summaries gives every rank the corpus index, and each
writes its share of the final arrays at its offsets. One process is the one-rank case: it scans
every input in order into one shard, which already is the final arrays.

Why ranks at all: one core builds about 1 M records/s, so 10^9 records take a quarter of an hour
while every other rank of the job idles in a collective. Scanning is embarrassingly parallel once
the inputs are cut into units (:mod:`.units`); what is sequential is only the corpus index, and
that needs a few numbers per unit, not the records.

Steps (every step ends in one collective that turns a failure on any rank into the same error
on every rank, so no rank hangs and a failed build leaves nothing behind):

1. the leader of each filesystem (rank 0, or one rank per node with ``node_local``,
   :mod:`.nodes`) checks its cache: all hold the corpus → reuse it; one holds another corpus →
   the usual error;
2. rank 0 resolves the inputs, records their identity (size, mtime) and cuts them into units,
   a contiguous run per rank (:func:`.units.plan_units`); every rank gets the plan;
3. each rank scans its units into a shard directory inside the temporary build directory
   (:mod:`.scan`);
4. all-gather of the unit summaries; every rank runs the same merge (:mod:`.merge`): errors in
   corpus order, else every unit's corpus index, residue offset and id offset (a second small
   all-gather when FASTA ranges hold records without an id, whose generated
   ``<file>:<record number>`` ids need their record numbers first, :mod:`.generated_ids`);
5. each rank writes its shard into the final files at its offsets (:mod:`.assemble`);
6. ``node_local`` with several nodes: the node leaders copy each rank's byte ranges to the
   other nodes;
7. each leader writes rejected.tsv and corpus.json, checks that no input changed, and renames
   the temporary directory onto the cache directory (:mod:`.publish`; another node or job that
   was faster with the same inputs wins).

Concurrent writes of disjoint byte ranges of one file from several ranks (step 5) are what MPI-IO
does on Lustre, GPFS, BeeGFS and local disks; old NFS clients can corrupt partial pages, use
``node_local`` there.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np

from bioprune.engine.data.alphabets import get_alphabet
from bioprune.engine.data.corpus.assemble import adopt_lone_shard, allocate, assemble_shard
from bioprune.engine.data.corpus.generated_ids import generated_id_bytes, read_deferred
from bioprune.engine.data.corpus.identity import (as_paths, cached, describe_mismatch,
                                                  input_identity)
from bioprune.engine.data.corpus.invalid import ON_INVALID
from bioprune.engine.data.corpus.layout import (META, PARTS, REJECTED, REJECTED_HEADER,
                                                rejected_rows, shard_dir)
from bioprune.engine.data.corpus.merge import Merged, merge_units
from bioprune.engine.data.corpus.nodes import (FilesystemGroups, copy_between_nodes,
                                               filesystem_groups)
from bioprune.engine.data.corpus.publish import check_visible, make_build_dir, publish
from bioprune.engine.data.corpus.scan import scan_units
from bioprune.engine.data.corpus.stats import build_info, sum_hists
from bioprune.engine.data.corpus.units import MIN_UNIT_BYTES, plan_units
from bioprune.engine.data.readers import CorpusError, resolve_input
from bioprune.engine.io.atomic import write_json
from bioprune.engine.runtime.collectives import Comm, together

#: what a cache directory that already holds something means to :func:`build_corpus`
IF_EXISTS = ("reuse", "error", "overwrite")


def _together(comm, fn, *args, **kwargs):
    return together(comm, fn, *args, what="the corpus build", **kwargs)


def _from_rank0(comm, fn, *args):
    """``fn(*args)`` computed on rank 0 and handed to every rank (errors shared)."""
    out = _together(comm, lambda: fn(*args) if comm.rank == 0 else None)
    return comm.allgather_object(out)[0] if comm.world > 1 else out


def build_corpus(paths, molecule: str, cache_dir, column: str = "sequence",
                 id_column: str | None = None, on_invalid: str = "error", *,
                 if_exists: str = "reuse", node_local: bool = False,
                 chunk_bytes: int = 8 << 20, batch_rows: int = 65536,
                 min_unit_bytes: int = MIN_UNIT_BYTES, units_per_rank: int = 1,
                 comm=None) -> Path:
    """Collective over the default process group (or one process): make sure this rank's cache
    directory holds the corpus of ``paths``, built by every rank. Returns the directory (with
    ``node_local``, this node's).

    ``if_exists``: a cache directory that holds something is reused when it holds the corpus of
    these inputs and refused when it holds another ("reuse", :func:`.load.load_corpus`), is an
    error whatever it holds ("error"), or is replaced ("overwrite")."""
    if if_exists not in IF_EXISTS:
        raise ValueError(f"if_exists must be one of {IF_EXISTS}, not {if_exists!r}")
    comm = comm or Comm()
    fs = filesystem_groups(comm, Path(cache_dir).absolute(), node_local)
    args = (paths, molecule, fs.cache_dir, column, id_column, on_invalid)
    have = _together(comm, lambda: _holds_corpus(*args, if_exists) if fs.leader else None)
    have = comm.allgather_object(have) if comm.world > 1 else [have]
    if all(have[r] for r in fs.leaders):
        return fs.cache_dir
    t0 = time.perf_counter()
    plan = _from_rank0(comm, _plan, paths, molecule, column, id_column, on_invalid, comm.world,
                       units_per_rank, min_unit_bytes)
    tmp = _together(comm, lambda: str(make_build_dir(fs.cache_dir)) if fs.leader else None)
    tmps = comm.allgather_object(tmp) if comm.world > 1 else [tmp]
    tmp = Path(tmps[fs.groups[fs.group][0]])
    try:
        _build(comm, fs, plan, tmp, column, id_column, on_invalid, chunk_bytes, batch_rows, t0,
               overwrite=if_exists == "overwrite")
    except BaseException:
        if fs.leader:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return fs.cache_dir


def _holds_corpus(paths, molecule, cache_dir: Path, column, id_column, on_invalid,
                  if_exists: str) -> bool:
    """The leader's look at its cache directory: True when the corpus is there to reuse."""
    if if_exists == "reuse":
        return cached(paths, molecule, cache_dir, column, id_column, on_invalid)
    if cache_dir.exists():
        if not cache_dir.is_dir():
            raise CorpusError("corpus cache path exists and is not a directory", path=cache_dir,
                              hint="pick another cache dir")
        if any(cache_dir.iterdir()) and if_exists == "error":
            raise CorpusError("corpus cache dir is not empty", path=cache_dir,
                              hint="pick another cache dir, delete it, or use load_corpus()")
    return False


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


def _build(comm, fs: FilesystemGroups, plan: dict, tmp: Path, column, id_column, on_invalid,
           chunk_bytes, batch_rows, t0, overwrite: bool) -> None:
    _together(comm, check_visible, tmp, comm.rank)
    alpha = get_alphabet(plan["molecule"])
    specs, units = plan["specs"], plan["units"]
    mine = [u for u in units if u.owner == comm.rank]
    shard = shard_dir(tmp, comm.rank)
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
        extra = _together(comm, generated_id_bytes, shard, units, merged, specs)
        generated = np.sum(comm.allgather_object(extra), axis=0)
        merged = _together(comm, merge_units, *merge, generated)
    phases["exchange"] = time.perf_counter() - t
    t = time.perf_counter()
    if comm.world == 1 and not read_deferred(shard).size:
        part = _together(comm, adopt_lone_shard, tmp, shard, units, merged, specs)
    else:
        _together(comm, lambda: allocate(tmp, merged) if fs.leader else None)
        part = _together(comm, assemble_shard, tmp, shard, mine, units, merged, specs, comm.rank)
    phases["assemble"] = time.perf_counter() - t
    part_sizes = comm.allgather_object(part) if comm.world > 1 else [part]
    if len(fs.groups) > 1:
        t = time.perf_counter()
        copy_between_nodes(comm, fs, tmp, units, merged, part_sizes)
        phases["between_nodes"] = time.perf_counter() - t
    seconds = time.perf_counter() - t0
    # one rank records what a one-process build always recorded (a run's manifest copies it);
    # several record how the work was shared, for the benchmark
    ranks = {} if comm.world == 1 else dict(
        ranks=comm.world, nodes=len(fs.groups), units=len(units),
        phases_s={k: round(v, 4) for k, v in phases.items()}, scan_per_rank=_rates(scanned))
    info = build_info(seconds, sum(f["size"] for f in merged.meta["inputs"]),
                      merged.meta["n_records"], **ranks)
    info = comm.allgather_object(info)[0] if comm.world > 1 else info
    _together(comm, _finish, fs, tmp, plan, merged, info, on_invalid, column, id_column,
              overwrite)


def _rates(scanned) -> dict:
    """The ranks' scan times and rates (records read per second of wall time, and per CPU
    second: the rate a rank with a core of its own reaches), for the benchmark."""
    out = {"seconds_max": round(max(t["scan"] for _, t in scanned), 4)}
    for key, name in (("scan", "records_per_s"), ("scan_cpu", "records_per_cpu_s")):
        rates = [n / t[key] for n, t in scanned if n and t[key] > 0]
        out[name + "_min"] = round(min(rates), 1) if rates else None
        out[name + "_max"] = round(max(rates), 1) if rates else None
    return out


def _finish(fs: FilesystemGroups, tmp: Path, plan: dict, merged: Merged, info: dict, on_invalid,
            column, id_column, overwrite: bool) -> None:
    """The leader: rejected.tsv, corpus.json, the inputs unchanged, then the atomic rename."""
    if not fs.leader:
        return
    if on_invalid == "skip":
        with open(tmp / REJECTED, "wb") as out:
            out.write((REJECTED_HEADER + "\n").encode())
            for r in range(fs.world):
                with open(rejected_rows(tmp, r), "rb") as f:
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
    publish(tmp, fs.cache_dir, identity, overwrite)
