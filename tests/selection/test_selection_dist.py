"""The distributed selector through the real ``deepspeed`` launcher: the same coreset, bitwise, on
1, 2 and 3 CPU ranks (gloo), equal to the brute-force reference; errors raised on every rank
together; the command line's exit code 2 on all ranks.

This file is also the launched worker (``python tests/selection/test_selection_dist.py --work
DIR``): one launch runs every scenario x strategy x budget, so the launcher's start-up is paid once
per world size.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bioprune.engine.runtime.launching import entry_command

# every test uses the module fixture `launched`: deepspeed launches of 1, 2 and 3 ranks
pytestmark = [pytest.mark.slow, pytest.mark.multirank, pytest.mark.subprocess]

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).resolve().relative_to(ROOT)   # this file, run by the launcher
WORLDS = (1, 2, 3)


# ----------------------------------------------------------------------------- scenarios

def _scenarios():
    """name -> (index, score, part sizes); parts uneven, one empty, many exact ties."""
    rng = np.random.default_rng(42)
    out = {}
    n = 6000
    idx = rng.permutation(n)
    score = np.round(rng.gamma(2.0, size=n), 1)                 # ~100 distinct values
    out["ties"] = (idx, score, [4000, 0, 7, 1500, 493])
    n = 999
    out["equal"] = (rng.permutation(n), np.full(n, 0.125), [1, 0, 998])
    out["one"] = (np.array([0]), np.array([-2.5]), [1])       # ranks 1 and 2 hold nothing
    n = 3000
    s = rng.standard_normal(n) * 10.0 ** rng.integers(-20, 20, n)
    s[::7] = 0.0
    s[::11] = -0.0
    out["wide"] = (rng.permutation(n), s, [100, 2900])
    n = 100
    bad = rng.random(n)
    bad[[5, 60, 61]] = [np.nan, np.inf, np.nan]
    out["bad_nan"] = (np.arange(n), bad, [50, 50])
    dup = np.arange(n)
    dup[70] = 10                                                # 10 in both parts, 70 missing
    out["bad_dup"] = (dup, rng.random(n), [50, 50])
    return out


def _configs():
    cfg = []
    for name, n, top in (("ties", 6000, 5700), ("equal", 999, 950), ("one", 1, 1),
                         ("wide", 3000, 2850)):
        for strategy in ("topk", "random"):
            for b in sorted({1, max(1, n // 10), n}):
                cfg.append(dict(scenario=name, strategy=strategy, budget=b))
        for b in sorted({1, max(1, n // 10), top}):
            cfg.append(dict(scenario=name, strategy="cci", budget=b))
    cfg.append(dict(scenario="ties", strategy="cci", budget=777, beta=0.2, K=7, seed=5))
    cfg.append(dict(scenario="ties", strategy="cci", budget=3000, beta=0.0, K=1, seed=1))
    cfg.append(dict(scenario="ties", strategy="random", budget=777, seed=9))
    for c in cfg:
        c.setdefault("beta", 0.05)
        c.setdefault("K", 50)
        c.setdefault("seed", 0)
        c["name"] = "-".join(str(c[k]) for k in ("scenario", "strategy", "budget", "beta", "K",
                                                 "seed"))
    errs = [dict(name="nan", scenario="bad_nan", strategy="topk", budget=3),
            dict(name="dup", scenario="bad_dup", strategy="cci", budget=3),
            dict(name="budget", scenario="ties", strategy="cci", budget=5701),
            dict(name="zero", scenario="ties", strategy="random", budget=0)]
    return cfg, errs


def _write_scenarios(work: Path):
    from bioprune.engine.io import scores as S

    for name, (idx, score, sizes) in _scenarios().items():
        d = work / name / "scores"
        bounds = np.cumsum([0] + sizes)
        for chunk, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            S.write_part(d, chunk, idx[a:b], score[a:b], np.full(b - a, 5), np.zeros(b - a))
        S.write_success(d, idx.size)


# ----------------------------------------------------------------------------- the worker

def worker(argv=None) -> int:
    import argparse

    import torch

    from bioprune.engine.runtime import distributed
    from bioprune.engine.io.scores import ScoresError, read_share
    from bioprune.engine.selection.exact import SelectionError, select
    from bioprune.engine.runtime.collectives import Comm

    p = argparse.ArgumentParser()
    p.add_argument("--work", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--local_rank", type=int, default=-1)
    args = p.parse_args(argv)
    distributed.init()
    comm = Comm()
    work, out = Path(args.work), Path(args.out)
    cfg, errs = _configs()
    shares = {}
    for name in _scenarios():
        shares[name] = read_share(work / name / "scores", comm)
    coresets, reports, errors = {}, {}, {}
    for c in cfg:
        data, n = shares[c["scenario"]]
        r = select(torch.from_numpy(data["index"]), torch.from_numpy(data["score"]),
                   c["strategy"], c["budget"], hard_cutoff=c["beta"], strata=c["K"],
                   seed=c["seed"], n=n, comm=comm)
        if comm.rank == 0:
            coresets[c["name"]] = r.indices
        rep = dict(r.report)
        for k in ("timings_s", "world_size", "allreduce_rounds"):
            rep.pop(k)
        rep["score_summary"].pop("mean")           # float sums: the last bits depend on the split
        rep["selected_summary"].pop("mean")
        reports[c["name"]] = rep
    for c in errs:
        data, n = shares[c["scenario"]]
        try:
            select(data["index"], data["score"], c["strategy"], c["budget"], n=n, comm=comm)
            errors[c["name"]] = None
        except (ScoresError, SelectionError) as e:
            errors[c["name"]] = f"{type(e).__name__}: {e}"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"errors-{comm.rank}.json").write_text(json.dumps(errors))
    if comm.rank == 0:
        np.savez(out / "coresets.npz", **coresets)
        (out / "reports.json").write_text(json.dumps(reports, sort_keys=True))
    distributed.finalize()
    return 0


# ----------------------------------------------------------------------------- launching

def _deepspeed(world: int, script: str, args: list[str], timeout=240):
    cmd = entry_command(script, args, world, launcher=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)     # the launcher and the ranks it started
        out, err = proc.communicate()
        pytest.fail(f"deepspeed run timed out after {timeout} s (hang?):\n"
                    f"{out[-2000:]}{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    work = tmp_path_factory.mktemp("dist")
    _write_scenarios(work)
    results = {}
    for world in WORLDS:
        out = work / f"out-{world}"
        p = _deepspeed(world, str(WORKER), ["--work", str(work), "--out", str(out)])
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        with np.load(out / "coresets.npz") as z:
            cores = {k: z[k] for k in z.files}
        reports = json.loads((out / "reports.json").read_text())
        errors = [json.loads((out / f"errors-{r}.json").read_text()) for r in range(world)]
        results[world] = (cores, reports, errors)
    return work, results


def test_bitwise_identical_across_world_sizes(launched):
    _, results = launched
    cores1, reports1, _ = results[1]
    cfg, _ = _configs()
    assert set(cores1) == {c["name"] for c in cfg}
    for world in WORLDS[1:]:
        cores, reports, _ = results[world]
        for name, a in cores1.items():
            b = cores[name]
            assert a.dtype == b.dtype == np.int64 and a.tobytes() == b.tobytes(), (world, name)
        assert reports == reports1, world


def test_distributed_matches_brute_force(launched):
    from test_selection_reference import ref_cci, ref_select

    _, results = launched
    scen = _scenarios()
    cfg, _ = _configs()
    for world in WORLDS:
        cores, reports, _ = results[world]
        for c in cfg:
            idx, score, _ = scen[c["scenario"]]
            got = cores[c["name"]]
            if c["strategy"] == "cci":
                want, det = ref_cci(idx, score, c["budget"], c["beta"], c["K"], c["seed"])
                st = reports[c["name"]]["strata"]
                assert (st["sizes"], st["budgets"], st["picks"]) == \
                    (det["sizes"], det["budgets"], det["picks"]), c["name"]
            else:
                want = ref_select(idx, score, c["strategy"], c["budget"], seed=c["seed"])
            np.testing.assert_array_equal(got, want, err_msg=f"{world} ranks: {c['name']}")


def test_errors_raised_on_every_rank(launched):
    _, results = launched
    expect = {
        "nan": "ScoresError: 3 score(s) are NaN or infinite; first corpus indices: [5, 60, 61]",
        "dup": "ScoresError: the scores must hold each corpus index 0..99 exactly once (100 rows, "
               "n = 100): 1 corpus index(es) missing (first: [70]); 1 row(s) repeat an index "
               "(first repeated: [10])",
        "budget": "SelectionError: budget 5701 is out of range: allowed 1..5700",
        "zero": "SelectionError: budget 0 is out of range: allowed 1..6000",
    }
    for world in WORLDS:
        for rank_errors in results[world][2]:
            for k, msg in expect.items():
                assert rank_errors[k] is not None and rank_errors[k].startswith(msg), \
                    (world, k, rank_errors[k])


def test_cli_under_deepspeed(launched, tmp_path):
    work, results = launched
    out = tmp_path / "cli"
    fasta = tmp_path / "corpus.fasta"
    fasta.write_text("".join(f">s{i}\n{'ACGU'[i % 4] * (2 + i % 3)}\n" for i in range(6000)))
    p = _deepspeed(2, "launch/select_coreset.py", ["--scores", str(work / "ties" / "scores"),
                                            "--strategy", "cci", "--budget", "600",
                                            "--out", str(out), "--data", str(fasta)])
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    core = np.load(out / "coreset.npy")
    want = results[1][0]["ties-cci-600-0.05-50-0"]
    assert core.tobytes() == want.tobytes()
    rep = json.loads((out / "selection.json").read_text())
    assert rep["world_size"] == 2 and rep["budget"] == 600
    assert (out / "score_histogram.png").stat().st_size > 1000
    heads = [ln for ln in (out / "coreset.fasta").read_text().splitlines() if ln[:1] == ">"]
    assert heads == [f">s{i}" for i in core]     # the input's header lines
    # bad input: every rank ends with exit code 2, the error printed once, no hang
    p = _deepspeed(2, "launch/select_coreset.py", ["--scores", str(work / "bad_nan" / "scores"),
                                            "--strategy", "topk", "--budget", "3",
                                            "--out", str(tmp_path / "bad")], timeout=240)
    assert p.returncode == 2
    text = p.stdout + p.stderr
    lines = [ln for ln in text.splitlines() if ln.startswith("error: ")]
    assert lines == ["error: 3 score(s) are NaN or infinite; first corpus indices: [5, 60, 61]"]
    assert "Traceback" not in text
    assert not (tmp_path / "bad").exists()


if __name__ == "__main__":
    try:
        code = worker()
    except BaseException:  # noqa: BLE001 - do not wait in the closing barrier: exit, the
        import traceback    # launcher stops the other ranks

        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    sys.exit(code)
