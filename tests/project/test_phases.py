"""The phase runner (``io.phases``): a phase whose outputs are there is skipped and read back, one
that runs is timed, recorded and saved in the manifest, memory peaks are kept per phase, and a
phase that fails on one rank fails on every rank (two spawned gloo ranks)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bioprune.engine.io.manifest import Manifest
from bioprune.engine.io.phases import Phase, PhaseRunner
from bioprune.engine.runtime.errors import UsageError
from pipeline_utils import spawn_ranks


def _runner(tmp_path) -> PhaseRunner:
    return PhaseRunner(Manifest(tmp_path / "manifest.json", "test", {}, 1))


def _saved(tmp_path) -> dict:
    return json.loads((tmp_path / "manifest.json").read_text())


def test_a_phase_that_runs_is_timed_recorded_and_saved(tmp_path):
    phases = _runner(tmp_path)
    out = phases(Phase("make", lambda: [1, 2, 3], items=len,
                       record=lambda m, r: m.count(made=len(r))))
    assert out == [1, 2, 3]
    saved = _saved(tmp_path)
    assert saved["counts"] == {"made": 3} and "make" in saved["timings_s"]
    assert saved["throughput"]["make"].endswith("seq/s")
    phases(Phase("quiet", lambda: None, timed=False))
    assert "quiet" not in _saved(tmp_path)["timings_s"]
    phases(Phase("own", lambda: {"s": 12.5}, seconds=lambda r: r["s"]))   # its own measure
    assert _saved(tmp_path)["timings_s"]["own"] == 12.5


def test_a_phase_whose_outputs_are_there_is_skipped_and_read_back(tmp_path):
    phases, calls = _runner(tmp_path), []
    out = phases(Phase("make", lambda: calls.append("run"), done=lambda: True,
                       resume=lambda: "read back", record=lambda m, r: calls.append("record")))
    assert out == "read back" and calls == []
    assert not (tmp_path / "manifest.json").exists()     # nothing new to record
    # no resume: a skipped phase gives None
    assert phases(Phase("make", lambda: calls.append("run"), done=lambda: True)) is None
    assert calls == []


def test_peaks_are_kept_per_phase_that_asks(tmp_path):
    phases = _runner(tmp_path)
    phases(Phase("a", lambda: None, peak=True))
    phases(Phase("b", lambda: None))
    phases(Phase("c", lambda: None, done=lambda: True, peak=True))   # skipped ones too
    assert list(phases.peaks) == ["a", "c"]
    assert len(phases.peaks["a"]["rss"]) == 1 and phases.peaks["a"]["rss"][0] > 0


def test_a_failing_phase_raises_and_records_nothing(tmp_path):
    phases = _runner(tmp_path)
    with pytest.raises(UsageError, match="bad input"):
        phases(Phase("make", _raise_usage, record=lambda m, r: m.count(made=1)))
    assert not (tmp_path / "manifest.json").exists()


def _raise_usage():
    raise UsageError("bad input")


def _rank_main(rank, world, init_file, out):
    import torch.distributed as dist

    from bioprune.engine.runtime.collectives import Comm

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    phases, seen = PhaseRunner(None, Comm()), []

    def crash_on_rank_1():
        if rank == 1:
            raise ValueError("rank 1's own error")

    def usage_on_rank_1():
        if rank == 1:
            raise UsageError("a usage error on rank 1")

    for fn in (crash_on_rank_1, usage_on_rank_1):
        try:
            phases(Phase("step", fn))
            seen.append("returned")
        except Exception as e:  # noqa: BLE001 - what each rank raised is the result
            seen.append(f"{type(e).__name__}: {e}")
    # outputs seen by rank 0 only: both ranks run the phase
    seen.append(str(phases(Phase("step", lambda: "ran", done=lambda: rank == 0,
                                 resume=lambda: "resumed"))))
    dist.barrier()
    dist.destroy_process_group()
    Path(out).write_text("\n".join(seen))


@pytest.mark.slow
@pytest.mark.multirank
@pytest.mark.subprocess
def test_a_phase_failing_on_one_rank_fails_on_every_rank(tmp_path):
    outs = spawn_ranks(_rank_main, (), tmp_path)
    rank0, rank1 = (o.read_text().split("\n") for o in outs)
    assert rank1 == ["ValueError: rank 1's own error", "UsageError: a usage error on rank 1", "ran"]
    assert rank0 == ["RuntimeError: phase step failed on rank 1: ValueError(\"rank 1's own "
                     "error\")", "UsageError: a usage error on rank 1", "ran"]
