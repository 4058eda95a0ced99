"""launch/score.py end to end: the run directory, 2 ranks = 1 rank, and resume after SIGKILL."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from pipeline_utils import command, data_dir, env, read_scalars, read_scores, run, small_corpus

# every test runs launch/score.py (most share the module fixture `one_rank`, one scoring run)
pytestmark = [pytest.mark.skipif(not (data_dir() / "rna").exists(), reason="no sample data"),
              pytest.mark.slow, pytest.mark.subprocess]

SCORE_ARGS = ["--model", "rnafm", "--model-size", "tiny", "--max-length", "96",
              "--subset-size", "32", "--finetune-epochs", "1", "--finetune-warmup", "2",
              "--finetune-global-batch", "16", "--micro-batch-size", "8", "--chunk-size", "8",
              "--seed", "11"]


@pytest.fixture(scope="module")
def corpus_files(tmp_path_factory):
    return small_corpus(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def one_rank(corpus_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("run1") / "run"
    run("score.py", ["--data", *corpus_files, *SCORE_ARGS, "--out", str(out)])
    return out


def test_run_directory_is_complete(one_rank, corpus_files):
    out = one_rank
    for name in ("manifest.json", "subset.npy", "fisher.safetensors", "adapted/model.safetensors",
                 "adapted/config.json", "scores/_SUCCESS"):
        assert (out / name).exists(), name
    assert not (out / "adapt_checkpoints").exists()   # optimizer state dropped after export
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "finished" and m["world_size"] == 1
    n = m["counts"]["sequences"]
    assert n == 80
    assert m["counts"]["subset"] == 32
    d = m["damping"]   # relative by default; the key-projection biases are not covered
    assert d["mode"] == "relative" and d["lambda"] == pytest.approx(d["alpha"] * d["fisher_mean"])
    zero = m["parameters"]["zero_gradient"]
    assert zero["names"] and all(n.endswith("k_proj.bias") for n in zero["names"])
    assert m["parameters"]["covered"] == m["parameters"]["total"] - zero["count"] > 0
    c = m["counts"]
    assert c["included_coordinates"] + c["excluded_coordinates"] == m["parameters"]["covered"]
    assert m["masks"]["kind"] == "cover" and m["masks"]["copies"] == 4     # 4 masks of 25 %
    assert m["masks"]["rate"] == 0.25 and m["masks"]["mask_only"] is True
    assert sum(m["score_contributions"].values()) == pytest.approx(1.0)
    assert m["score_contributions"]["positional_embeddings"] < 0.5
    assert -1 <= m["length_spearman"] <= 1
    assert m["corpus"]["stats"]["ambiguity_codes"]  # bpRNA rows carry IUPAC codes
    assert len(m["corpus"]["content_digest"]) == 32   # the scored corpus's identity (BLAKE2b-128)
    assert m["masks"]["estimator"] == "mean"
    subset = np.load(out / "subset.npy")
    assert subset.dtype == np.int64 and len(np.unique(subset)) == 32
    # the parts carry the record id, D_sub membership and the input file, for users' joins
    import pyarrow.parquet as pq

    from bioprune.engine.data.corpus import Corpus

    t = pq.read_table(sorted((out / "scores").glob("part-*.parquet"))).to_pandas()
    corpus = Corpus.open(m["corpus"]["cache_dir"])
    assert t["id"].tolist() == [corpus.record_id(i) for i in t["index"]]
    assert t["in_subset"].sum() == 32 and set(t.loc[t["in_subset"], "index"]) == set(subset)
    names = [Path(p).name for p in corpus_files]
    assert [names.index(s) for s in t["source"]] == corpus.file_of(t["index"].to_numpy()).tolist()
    s = read_scores(out / "scores")
    np.testing.assert_array_equal(s["index"], np.arange(n))   # each index exactly once
    assert s["score"].dtype == np.float64 and s["length"].dtype == np.int32
    assert s["loss"].dtype == np.float32
    assert np.isfinite(s["score"]).all() and (s["score"] > 0).all()
    assert int((out / "scores" / "_SUCCESS").read_text().split()[0]) == n
    # --report-to tensorboard (the default): the adaptation's curves, read back
    tb = read_scalars(out / "tensorboard" / "adapt")
    assert [step for step, _ in tb["train/loss"]] == [1, 2] and "epoch/train_loss" in tb
    fisher = load_file(str(out / "fisher.safetensors"))
    assert set(fisher) == set(m["parameters"]["names"])
    assert m["counts"]["fisher_nonzero"] == sum(int((f != 0).sum()) for f in fisher.values())


@pytest.mark.multirank
def test_two_ranks_give_the_scores_and_coreset_of_one(one_rank, corpus_files, tmp_path):
    out2 = tmp_path / "run2"
    run("score.py", ["--data", *corpus_files, *SCORE_ARGS, "--out", str(out2)], ranks=2)
    m = json.loads((out2 / "manifest.json").read_text())
    assert m["world_size"] == 2
    # rank 0 alone logs the adaptation: one event file
    assert len(list((out2 / "tensorboard" / "adapt").glob("events.out.tfevents.*"))) == 1
    s1, s2 = read_scores(one_rank / "scores"), read_scores(out2 / "scores")
    np.testing.assert_array_equal(s1["index"], s2["index"])
    np.testing.assert_array_equal(s1["length"], s2["length"])
    np.testing.assert_allclose(s2["score"], s1["score"], rtol=1e-5)
    np.testing.assert_allclose(s2["loss"], s1["loss"], rtol=1e-5)
    for strategy in ("topk", "cci"):
        sel = []
        for src, ranks in ((one_rank, 1), (out2, 2)):
            dst = tmp_path / f"sel-{strategy}-{ranks}"
            run("select_coreset.py", ["--scores", str(src / "scores"), "--strategy", strategy,
                              "--budget", "20", "--strata", "5", "--out", str(dst)], ranks=ranks)
            sel.append(np.load(dst / "coreset.npy"))
        np.testing.assert_array_equal(sel[0], sel[1])


@pytest.mark.multirank
def test_select_under_mpiexec_matches_one_rank(one_rank, tmp_path):
    # mpirun/mpiexec instead of the deepspeed launcher: ranks are discovered through mpi4py
    sel = []
    for ranks, mpi in ((1, False), (2, True)):
        dst = tmp_path / f"sel-{ranks}"
        p = run("select_coreset.py", ["--scores", str(one_rank / "scores"), "--strategy", "cci",
                              "--budget", "25", "--strata", "4", "--seed", "3", "--out", str(dst)],
                ranks=ranks, mpi=mpi)
        sel.append(np.load(dst / "coreset.npy"))
    assert "on 2 rank" in p.stdout
    np.testing.assert_array_equal(sel[0], sel[1])


def _start_until_parts(cmd, scores: Path, parts: int) -> subprocess.Popen:
    """Start a scoring command in its own session; return once it has written ``parts`` score
    parts (and is still running, so it can be interrupted midway)."""
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if scores.exists() and len(list(scores.glob("part-*.parquet"))) >= parts:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before it could be interrupted midway"
    return proc


def test_sigkill_midway_then_resume(one_rank, corpus_files, tmp_path):
    out = tmp_path / "killed"
    scores = out / "scores"
    proc = _start_until_parts(command("score.py", ["--data", *corpus_files, *SCORE_ARGS,
                                                   "--report-to", "none", "--out", str(out)]),
                              scores, 3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    parts = sorted(scores.glob("part-*.parquet"))
    assert 3 <= len(parts) < 10 and not (scores / "_SUCCESS").exists()
    assert not (out / "tensorboard").exists()     # --report-to none: the adaptation logged nothing
    stamps = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in parts}

    # resumed with another --report-to (the default): not part of the run identity
    run("score.py", ["--data", *corpus_files, *SCORE_ARGS, "--out", str(out)])
    for name, stamp in stamps.items():
        p = scores / name
        assert (p.stat().st_ino, p.stat().st_mtime_ns) == stamp, f"{name} was recomputed"
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["resumed_chunks"] == len(stamps) and m["runs"] == 2
    assert m["counts"]["scored_this_run"] == 80 - sum(
        len(read_scores_part(scores / n)) for n in stamps)
    a, b = read_scores(one_rank / "scores"), read_scores(scores)
    np.testing.assert_array_equal(a["index"], b["index"])
    np.testing.assert_allclose(b["score"], a["score"], rtol=1e-5)


def _session_processes(sid: int) -> list[int]:
    """Live processes of session ``sid`` (the launcher started with start_new_session)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                out.append(int(d.name))
    return out


def test_sigterm_to_the_launcher_stops_every_rank_then_resume(one_rank, corpus_files, tmp_path):
    """``kill -TERM`` of the deepspeed launcher (what timeout, kill and a scheduler's limit do):
    both ranks stop within seconds (the launcher itself does not forward it on one node), leave
    no lock and no shared-memory buffer, and the same command resumes to the same scores."""
    out = tmp_path / "terminated"
    cmd = command("score.py", ["--data", *corpus_files, *SCORE_ARGS, "--out", str(out)], ranks=2)
    port = cmd[cmd.index("--master_port") + 1]
    scores = out / "scores"
    proc = _start_until_parts(cmd, scores, 2)
    os.kill(proc.pid, signal.SIGTERM)                 # the launcher only, as `kill PID` does
    proc.wait(timeout=30)
    t0 = time.time()
    while _session_processes(proc.pid) and time.time() - t0 < 15:
        time.sleep(0.2)
    left = _session_processes(proc.pid)
    if left:
        os.killpg(proc.pid, signal.SIGKILL)
    assert not left, f"rank processes still running 15 s after SIGTERM: {left}"
    assert not (scores / "_SUCCESS").exists()
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"))
    run("score.py", ["--data", *corpus_files, *SCORE_ARGS, "--out", str(out)], ranks=2)
    a, b = read_scores(one_rank / "scores"), read_scores(scores)
    np.testing.assert_array_equal(a["index"], b["index"])
    np.testing.assert_allclose(b["score"], a["score"], rtol=1e-5)
    # and bit for bit what an uninterrupted 2-rank run gives
    unbroken = tmp_path / "unbroken"
    run("score.py", ["--data", *corpus_files, *SCORE_ARGS, "--out", str(unbroken)], ranks=2)
    c = read_scores(unbroken / "scores")
    for k in c:
        np.testing.assert_array_equal(b[k], c[k])


def test_resume_over_a_damaged_part_rescores_it(one_rank, corpus_files, tmp_path):
    """A part truncated by a machine crash (renamed into place, ``_SUCCESS`` absent): the rerun
    names it, deletes it, scores that chunk again and ends with the uninterrupted run's scores;
    no traceback. The other parts are kept untouched."""
    import shutil

    out = tmp_path / "damaged"
    shutil.copytree(one_rank, out)
    scores = out / "scores"
    (scores / "_SUCCESS").unlink()
    bad = scores / "part-000003.parquet"
    bad.write_bytes(bad.read_bytes()[:100])              # truncated: no footer
    (scores / "part-000005.parquet").write_bytes(b"")    # empty
    keep = {p.name: p.stat().st_mtime_ns for p in scores.glob("part-*.parquet")
            if p.name not in ("part-000003.parquet", "part-000005.parquet")}
    p = run("score.py", ["--data", *corpus_files, *SCORE_ARGS, "--out", str(out)])
    assert "part-000003.parquet is damaged" in p.stderr and "scoring chunk 3 again" in p.stderr
    assert "part-000005.parquet is damaged" in p.stderr and "Traceback" not in p.stderr
    for name, stamp in keep.items():
        assert (scores / name).stat().st_mtime_ns == stamp, f"{name} was recomputed"
    a, b = read_scores(one_rank / "scores"), read_scores(scores)
    np.testing.assert_array_equal(a["index"], b["index"])
    np.testing.assert_allclose(b["score"], a["score"], rtol=1e-5)
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["resumed_chunks"] == len(keep)


def test_part_problem_reads_only_the_footer(tmp_path):
    from bioprune.engine.io import scores as S

    path = S.write_part(tmp_path, 2, index=np.arange(16, 24), score=np.ones(8),
                        length=np.full(8, 5), loss=np.ones(8, np.float32))
    assert S.part_problem(path, 16, 24) is None
    assert "rows" in S.part_problem(path, 16, 25)
    assert "outside" in S.part_problem(path, 8, 16)
    path.write_bytes(path.read_bytes()[:-20])
    assert S.part_problem(path, 16, 24).startswith("unreadable")


def read_scores_part(path: Path):
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=["index"]).column("index").to_numpy()


def test_rerun_with_other_settings_is_refused(one_rank, corpus_files):
    args = [a if a != "11" else "12" for a in SCORE_ARGS]  # another --seed
    p = run("score.py", ["--data", *corpus_files, *args, "--out", str(one_rank)], check=False)
    assert p.returncode == 2 and "seed" in p.stderr and "use a new --out" in p.stderr


def test_protein_corpus_with_esmc_without_finetuning(tmp_path):
    # ESM-C on real NetSurfP rows, the paper's "w/o ft" ablation, then a Random coreset as FASTA
    src = data_dir() / "protein" / "netsurfp_ss3.csv"
    table = tmp_path / "prot.csv"
    table.write_text("".join(src.read_text().splitlines(keepends=True)[:25]))
    out = tmp_path / "run"
    run("score.py", ["--data", str(table), "--model", "esmc", "--max-length", "80",
                     "--subset-fraction", "0.5", "--finetune-epochs", "0", "--chunk-size", "10",
                     "--out", str(out)])
    m = json.loads((out / "manifest.json").read_text())
    assert m["corpus"]["molecule"] == "protein" and m["counts"]["sequences"] == 24
    assert m["counts"]["subset"] == 12 and "adapt" not in m["timings_s"]
    s = read_scores(out / "scores")
    assert (s["score"] > 0).all() and (s["length"] <= 80).all()
    run("select_coreset.py", ["--scores", str(out / "scores"), "--strategy", "random",
                              "--budget", "5", "--out", str(out / "random"), "--data"])
    coreset = np.load(out / "random" / "coreset.npy")
    # table rows: '>id' and the sequence cell as given
    import pandas as pd

    rows = pd.read_csv(table)
    want = "".join(f">{rows.id[i]}\n{rows.sequence[i]}\n" for i in coreset)
    assert len(coreset) == 5 and (out / "random" / "coreset.fasta").read_text() == want
