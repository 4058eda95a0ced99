"""Running the real entry points from tests: plain python for one rank, the deepspeed launcher
for several, on a small corpus cut from the real sample data; and a function on several spawned
gloo ranks (``spawn_ranks``)."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bioprune.engine.data.paths import data_dir  # the tests import it from here too
from bioprune.engine.runtime.launching import entry_command, free_port

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = ROOT / "launch"


def small_corpus(tmp: Path, n_fasta: int = 40, n_csv: int = 40) -> list[str]:
    """Two real inputs of two formats: tRNAs (FASTA) and bpRNA rows (CSV with IUPAC codes)."""
    src = data_dir() / "rna"
    fasta = tmp / "trna.fasta"
    records, out = 0, []
    for line in (src / "rfam_RF00005.fasta").read_text().splitlines():
        if line.startswith(">"):
            records += 1
            if records > n_fasta:
                break
        out.append(line)
    fasta.write_text("\n".join(out) + "\n")
    table = tmp / "bprna.csv"
    with open(src / "bprna_nf15.csv") as f:
        rows = list(csv.reader(f))
    header, rows = rows[0], rows[1:]
    ambiguous = [r for r in rows if set(r[1]) - set("ACGU")][:5]   # rows with IUPAC codes
    keep = rows[:n_csv - len(ambiguous)] + ambiguous
    with open(table, "w", newline="") as g:
        csv.writer(g).writerows([header, *keep])
    return [str(fasta), str(table)]


def command(script: str, args: list[str], ranks: int = 1, mpi: bool = False) -> list[str]:
    """What the user types: ``python`` for one rank, the ``deepspeed`` launcher for several
    (``runtime.launching``, as the demo and the study), or mpiexec."""
    if mpi:  # mpiexec from the mpich wheel; DeepSpeed finds the ranks through mpi4py
        mpiexec = Path(sys.executable).parent / "mpiexec"
        return [str(mpiexec), "-n", str(ranks), "-env", "MASTER_PORT", str(free_port()),
                sys.executable, str(LAUNCH / script), *args]
    return entry_command(LAUNCH / script, args, ranks)


def env() -> dict:
    e = dict(os.environ)
    e["PATH"] = f"{Path(sys.executable).parent}:{e.get('PATH', '')}"
    e.setdefault("PYTHONUNBUFFERED", "1")
    return e


def run(script: str, args: list[str], ranks: int = 1, check: bool = True, timeout: int = 600,
        mpi: bool = False):
    p = subprocess.run(command(script, args, ranks, mpi), env=env(), capture_output=True, text=True,
                       timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{script} failed ({p.returncode}):\n{p.stdout[-3000:]}\n"
                             f"{p.stderr[-5000:]}")
    return p


def read_scores(scores_dir: Path) -> dict:
    from bioprune.engine.io.scores import read_scores as rs

    cols = rs(scores_dir, columns=("index", "score", "length", "loss"))
    order = np.argsort(cols["index"])
    return {k: np.asarray(v)[order] for k, v in cols.items()}


def read_scalars(directory) -> dict:
    """{tag: [(step, value), ...]} of the TensorBoard event files in ``directory``, read back with
    TensorBoard's own EventAccumulator."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(directory))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def spawn_ranks(target, args, tmp_path, world: int = 2, timeout: int = 120) -> list[Path]:
    """Run ``target(rank, world, init_file, *args, out)`` in ``world`` spawned processes that
    join one gloo group through a file; returns each rank's ``out`` path. A rank that does not
    finish in time fails the test (a deadlock), one that fails fails it too."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    outs = [tmp_path / f"out-{r}" for r in range(world)]
    procs = [ctx.Process(target=target, args=(r, world, str(tmp_path / "init"), *args,
                                              str(outs[r])))
             for r in range(world)]
    for q in procs:
        q.start()
    for q in procs:
        q.join(timeout=timeout)
    for q in procs:
        if q.is_alive():
            q.kill()
            pytest.fail(f"{target.__name__} deadlocked across ranks")
        assert q.exitcode == 0
    return outs
