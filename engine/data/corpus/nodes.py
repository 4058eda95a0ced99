"""Which ranks share a filesystem, and the node-local cache (``node_local``): for clusters
without a fast shared filesystem, ``cache_dir`` names a directory on each node's own disk (the
same path on every node); after the assembly the node leaders broadcast what their node's ranks
wrote to the other nodes, so every node holds the whole corpus.

Assumed: every input is readable at its path from every rank (a slow shared mount is enough:
each input byte is read once by one rank), and the ranks of one node see the same local disk.
Nodes are told apart by host name; ``BIOPRUNE_CORPUS_SIMULATE_NODES=K`` makes groups of K
consecutive ranks pretend to be separate nodes with cache directories ``DIR@simN`` (tests on
one machine)."""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from bioprune.engine.data.corpus.assemble import COPY_BYTES, segment
from bioprune.engine.data.corpus.layout import ARRAYS, rejected_rows
from bioprune.engine.data.corpus.merge import Merged
from bioprune.engine.runtime.collectives import together

SIMULATE_NODES_ENV = "BIOPRUNE_CORPUS_SIMULATE_NODES"


@dataclass
class FilesystemGroups:
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


def filesystem_groups(comm, cache_dir: Path, node_local: bool) -> FilesystemGroups:
    """One group of every rank (a shared cache directory), or with ``node_local`` one group per
    host, each with its own cache directory (collective)."""
    if not node_local:
        return FilesystemGroups(comm.rank, comm.world, [list(range(comm.world))], 0, cache_dir)
    sim = int(os.environ.get(SIMULATE_NODES_ENV, "0") or 0)
    name = f"sim{comm.rank // sim}" if sim > 0 else socket.gethostname()
    names = comm.allgather_object(name)
    order = list(dict.fromkeys(names))
    groups = [[r for r in range(comm.world) if names[r] == nm] for nm in order]
    if sim > 0:
        cache_dir = cache_dir.with_name(f"{cache_dir.name}@{name}")
    return FilesystemGroups(comm.rank, comm.world, groups, order.index(name), cache_dir)


def copy_between_nodes(comm, fs: FilesystemGroups, tmp: Path, units, merged: Merged,
                       part_sizes) -> None:
    """Every node's leader broadcasts the byte ranges its node's ranks wrote to the leaders of
    the other nodes (one process group of the leaders), so each node holds the whole corpus."""
    import torch
    import torch.distributed as dist

    group = dist.new_group(fs.leaders)     # collective over all ranks
    if not fs.leader:
        together(comm, lambda: None, what="the corpus build")
        return

    def work():
        failure = None
        files = {key: tmp / fn for key, (fn, _) in ARRAYS.items()}
        for r in range(fs.world):
            src = fs.leader_of(r)
            seg = segment(merged, units, r)
            seg["part"] = (0, part_sizes[r])
            files["part"] = rejected_rows(tmp, r)
            for key, (at, length) in seg.items():
                if not length:
                    continue
                fd = os.open(files[key], os.O_RDONLY if src == fs.rank else
                             os.O_WRONLY | os.O_CREAT, 0o644)
                try:
                    for c in range(0, length, COPY_BYTES):
                        m = min(COPY_BYTES, length - c)
                        if src == fs.rank:
                            buf = bytearray(os.pread(fd, m, at + c).ljust(m, b"\0"))
                            t = torch.frombuffer(buf, dtype=torch.uint8)
                        else:
                            t = torch.empty(m, dtype=torch.uint8)
                        t = t.to(comm.device)
                        dist.broadcast(t, src=src, group=group)
                        if src != fs.rank and failure is None:
                            try:
                                os.pwrite(fd, t.cpu().numpy().tobytes(), at + c)
                            except OSError as e:
                                failure = e
                    if src != fs.rank:
                        os.fsync(fd)
                finally:
                    os.close(fd)
        if failure is not None:
            raise failure

    together(comm, work, what="the corpus build")

