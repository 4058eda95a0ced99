"""The phases of a run, run one way: a stage (scoring, selection, pretraining) declares each
phase — its name, how to tell its outputs are already in the run directory, how to read them back,
what it records in ``manifest.json`` — and :class:`PhaseRunner` does what every phase needs:

- skip-if-done: a phase whose outputs are there on every rank is not run again (``resume`` reads
  them back instead), so a rerun into the same directory resumes after the last finished phase;
- fail together: the phase's work runs under :func:`bioprune.engine.runtime.collectives.together`,
  so an error on one rank stops every rank at the end of that phase instead of leaving the others
  waiting in the next collective;
- timing: ``manifest.timing(name, seconds, items)`` for a phase that ran, the slowest rank's wall
  time (a phase is as slow as its slowest rank) unless the phase measures its own;
- memory: each rank's peak memory since the previous recorded peak (``peak=True``), gathered to
  ``peaks`` for the manifest's ``zero`` record;
- the manifest: the phase's ``record`` on rank 0, then the manifest is saved (rewritten
  atomically), so an interrupted run has an up-to-date one.

Collective: every rank runs the same phases in the same order.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from bioprune.engine.io.manifest import Manifest
from bioprune.engine.runtime.collectives import Comm, together
from bioprune.engine.runtime.zero3 import peak_memory_mb, reset_peak_memory

T = TypeVar("T")


def _never() -> bool:
    return False


@dataclass(frozen=True)
class Phase(Generic[T]):
    """One step of a run. ``run`` does the work and returns what later phases need; when ``done``
    says its outputs are already there (on every rank), ``resume`` returns that instead (None
    without one; a phase without ``done`` always runs)."""
    name: str
    run: Callable[[], T]
    done: Callable[[], bool] = _never
    resume: Callable[[], T] | None = None
    # on rank 0 after ``run`` (not after ``resume``: a resumed phase's record is already there)
    record: Callable[[Manifest, T], None] | None = None
    # the items behind the manifest's throughput (sequences); None: a timing without one
    items: Callable[[T], int | None] | None = None
    timed: bool = True            # record the phase's wall time when it ran
    # the phase's own measure of its time (training's loop alone, without building the model
    # and exporting it); default: the slowest rank's wall time of ``run``
    seconds: Callable[[T], float] | None = None
    peak: bool = False            # record every rank's peak memory when it ends (ran or resumed)


class PhaseRunner:
    """Runs a stage's phases (see the module's docstring). ``manifest`` is rank 0's (None on the
    other ranks); ``peaks`` is ``{phase: {kind: [peak MiB of each rank]}}``."""

    def __init__(self, manifest: Manifest | None, comm: Comm | None = None):
        self.manifest = manifest
        self._comm = comm
        self.peaks: dict[str, dict[str, list[float]]] = {}

    @property
    def comm(self) -> Comm:
        # made when used: a one-process ZeRO-3 run joins its process group only while loading
        return self._comm if self._comm is not None else Comm()

    def __call__(self, phase: Phase[T]) -> T:
        what, comm = f"phase {phase.name}", self.comm
        # the outputs count as there only when every rank sees them: ranks never split between
        # running a phase (with its collectives) and skipping it
        missing = together(comm, lambda: not phase.done(), what=what)
        if comm.any(missing):
            t = time.time()
            result = together(comm, phase.run, what=what)
            seconds = (comm.max_float(time.time() - t) if phase.seconds is None
                       else phase.seconds(result))
            together(comm, self._record, phase, seconds, result, what=what)
        elif phase.resume is not None:
            result = together(comm, phase.resume, what=what)
        else:
            result = None
        if phase.peak:
            self.peak(phase.name)
        return result

    def _record(self, phase: Phase[T], seconds: float, result: T) -> None:
        """Rank 0: the phase's timing and record, then the manifest saved."""
        if self.manifest is None:
            return
        if phase.timed:
            self.manifest.timing(phase.name, seconds, phase.items(result) if phase.items else None)
        if phase.record is not None:
            phase.record(self.manifest, result)
        self.manifest.save()

    def peak(self, name: str) -> None:
        """Every rank's peak memory since the previous call, under ``name``; the next peak
        starts here (collective)."""
        mine = peak_memory_mb()
        reset_peak_memory()
        every = self.comm.allgather_object(mine)
        self.peaks[name] = {k: [round(m[k], 1) for m in every] for k in mine}
