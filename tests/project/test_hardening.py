"""Bad input and operator mistakes: each gets one clear line (the expected fragment below), the
exit code it should, no traceback, and it fails before anything expensive (the corpus build,
adaptation, any DeepSpeed engine) — within a few seconds.

The table runs the launchers' ``main`` in this process (the same code path as the command line:
argument parsing, the top-level handler, exit codes); the few cases that need a real process
(the rendezvous port, a lock held by another process) run one."""
from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline_utils import LAUNCH, data_dir, env, small_corpus

pytestmark = pytest.mark.skipif(not (data_dir() / "rna").exists(), reason="no sample data")

# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    from bioprune.engine.io import scores as S

    d = tmp_path_factory.mktemp("hardening")
    c = {"tmp": str(d)}
    c["rna"] = small_corpus(d)                              # 80 real RNA records, FASTA + CSV
    src = data_dir() / "protein" / "netsurfp_ss3.csv"
    prot = d / "prot.csv"
    prot.write_text("".join(src.read_text().splitlines(keepends=True)[:25]))
    c["prot"] = str(prot)
    bad = d / "bad.fasta"
    bad.write_text(">a\nACGU\n>b\nACXGU\n>c\nACG\n>d\n\n>e\nAC-G\n>f\nGGGA\n>g\nAIG\n")
    c["bad"] = str(bad)
    (d / "notes.txt").write_text("ACGU\n")
    c["txt"] = str(d / "notes.txt")
    (d / "weights.pt").write_text("not weights\n")
    (d / "weights.safetensors").write_bytes(b"\x00\x01garbage")
    (d / "ds_bad.json").write_text("{ not json")
    (d / "a_file").write_text("x")
    c["file"] = str(d / "a_file")
    (d / "wdir").mkdir()
    c["wdir"] = str(d / "wdir")
    np.save(d / "idx1.npy", np.arange(0, 40, 2, dtype=np.int64))
    np.save(d / "idx2.npy", np.arange(1, 40, 2, dtype=np.int64))
    np.save(d / "floats.npy", np.linspace(0, 1, 5))
    np.save(d / "empty.npy", np.zeros(0, np.int64))
    c["empty"] = str(d / "empty.npy")
    for k in ("idx1", "idx2", "floats", "ds_bad"):
        c[k] = str(d / (k + (".json" if k == "ds_bad" else ".npy")))
    # a finished scoring run (synthetic scores over the 80-record corpus)
    run = d / "run"
    scores = run / "scores"
    rng = np.random.default_rng(0)
    for chunk in range(2):
        idx = np.arange(chunk * 40, chunk * 40 + 40)
        S.write_part(scores, chunk, idx, rng.random(40), np.full(40, 50), np.full(40, 1.0))
    S.write_success(scores, 80)
    (run / "manifest.json").write_text(json.dumps(
        {"status": "finished", "corpus": {"paths": c["rna"], "molecule": "rna",
                                          "column": "sequence", "id_column": None,
                                          "cache_dir": str(d / "run" / "corpus")}}))
    c["run"] = str(run)
    (d / "unfinished" / "scores").mkdir(parents=True)
    c["unfinished"] = str(d / "unfinished")
    return c


def _expand(args, ctx, out):
    argv = []
    for a in args:
        if a == "{rna}":
            argv += ctx["rna"]
        elif a == "{out}":
            argv.append(str(out))
        else:
            argv.append(a.format(**ctx))
    return argv


def invoke(launcher: str, argv: list[str], capsys):
    """(exit code, stdout, stderr, seconds) of launch/<launcher>.py's main in this process."""
    import importlib

    mod = importlib.import_module(f"bioprune.launch.{launcher}")
    t = time.perf_counter()
    try:
        code = mod.main(argv)
    except SystemExit as e:       # argparse's own errors
        code = e.code
    seconds = time.perf_counter() - t
    cap = capsys.readouterr()
    return code, cap.out, cap.err, seconds


SCORE = ["--data", "{rna}", "--out", "{out}"]
PRETRAIN = ["--data", "{rna}", "--indices", "{idx1}", "--out", "{out}"]
SELECT = ["--scores", "{run}", "--strategy", "topk", "--out", "{out}"]

# (id, launcher, argv, expected fragment of stderr, exit code)
CASES = [
    # --- damping: 0 / negative / nan crashed after adapt + Fisher; inf gave all-zero scores
    ("damping-zero", "score", SCORE + ["--damping", "0"], "--damping 0.0: must be a finite number > 0", 2),
    ("damping-negative", "score", SCORE + ["--damping=-1e-8"], "--damping -1e-08: must be a finite number > 0", 2),
    ("damping-nan", "score", SCORE + ["--damping", "nan"], "--damping nan: must be a finite number > 0", 2),
    ("damping-inf", "score", SCORE + ["--damping", "inf"], "inf zeroes every score", 2),
    # --- flags that ended in a raw traceback
    ("params-bad-regex", "score", SCORE + ["--params", "encoder.(layer"], "--params 'encoder.(layer': not a valid regular expression", 2),
    ("params-match-nothing", "score", SCORE + ["--params", "no_such_layer"], "--params 'no_such_layer' matches no trainable parameter of rnafm tiny", 2),
    ("model-size-unknown", "score", SCORE + ["--model-size", "huge"], "--model-size huge: unknown for --model rnafm; choose one of tiny", 2),
    ("checkpoint-missing", "score", SCORE + ["--checkpoint", "{tmp}/nope.pth"], "nope.pth: no such weights file", 2),
    ("checkpoint-not-weights", "score", SCORE + ["--checkpoint", "{tmp}/weights.pt"], "weights.pt: not a weights file", 2),
    ("checkpoint-bad-safetensors", "score", SCORE + ["--checkpoint", "{tmp}/weights.safetensors"], "not a readable .safetensors weights file", 2),
    ("checkpoint-directory", "score", SCORE + ["--checkpoint", "{wdir}"], "wdir: is a directory, expected a weights file", 2),
    ("out-is-a-file", "score", ["--data", "{rna}", "--out", "{file}"], "a_file: is a file, not a directory", 2),
    ("corpus-cache-is-a-file", "score", SCORE + ["--corpus-cache", "{file}"], "--corpus-cache", 2),
    ("deepspeed-config-missing", "score", SCORE + ["--deepspeed_config", "{tmp}/nope.json"], "--deepspeed_config", 2),
    ("deepspeed-config-not-json", "score", SCORE + ["--deepspeed_config", "{ds_bad}"], "not valid JSON", 2),
    # --- an optional tracker that is not installed (wandb and mlflow are not in the lock)
    ("report-to-wandb-missing", "score", SCORE + ["--report-to", "wandb"], "--report-to wandb: the 'wandb' package is not installed; pip install wandb", 2),
    ("report-to-mlflow-missing", "pretrain", PRETRAIN + ["--report-to", "mlflow"], "pip install mlflow", 2),
    # --- sizes and rates
    ("subset-size-zero", "score", SCORE + ["--subset-size", "0"], "--subset-size 0: must be an integer >= 1", 2),
    ("subset-fraction-above-one", "score", SCORE + ["--subset-fraction", "1.5"], "--subset-fraction 1.5: must be a finite number > 0 and <= 1", 2),
    ("finetune-epochs-negative", "score", SCORE + ["--finetune-epochs=-1"], "--finetune-epochs -1: must be an integer >= 0", 2),
    ("finetune-lr-nan", "score", SCORE + ["--finetune-lr", "nan"], "--finetune-lr nan: must be a finite number > 0", 2),
    ("global-batch-not-multiple", "score", SCORE + ["--finetune-global-batch", "20"], "not a multiple of --micro-batch-size x ranks = 16", 2),
    ("seed-negative", "score", SCORE + ["--seed=-1"], "--seed -1: must be an integer >= 0", 2),
    ("max-length-zero", "score", SCORE + ["--max-length", "0"], "--max-length must be >= 1", 2),
    # --- inputs
    ("data-missing", "score", ["--data", "{tmp}/nope.fasta", "--out", "{out}"], "nope.fasta: file not found", 2),
    ("data-unknown-format", "score", ["--data", "{txt}", "--out", "{out}"], "unknown input format", 2),
    ("rna-into-esmc", "score", SCORE + ["--model", "esmc"], "looks like RNA/DNA", 2),
    ("protein-into-rnafm", "score", ["--data", "{prot}", "--out", "{out}"], "looks like protein", 2),
    ("molecule-contradicts-model", "score", SCORE + ["--model", "esmc", "--molecule", "rna"], "--molecule rna does not match --model esmc", 2),
    ("bad-records-listed-together", "score", ["--data", "{bad}", "--molecule", "rna", "--out", "{out}"], "4 invalid records, the first 4 listed", 2),
    # --- pretraining
    ("indices-missing", "pretrain", ["--data", "{rna}", "--indices", "{tmp}/nope.npy", "--out", "{out}"], "nope.npy: no such index file", 2),
    ("indices-not-integers", "pretrain", ["--data", "{rna}", "--indices", "{floats}", "--out", "{out}"], "expected a 1-D integer array", 2),
    ("indices-unknown-ids", "pretrain", ["--data", "{rna}", "--indices", "{txt}", "--out", "{out}"], "1 record ids are not in --data (first: ['ACGU'])", 2),
    ("indices-empty", "pretrain", ["--data", "{rna}", "--indices", "{empty}", "--out", "{out}"], "holds no indices (an empty coreset)", 2),
    ("save-steps-zero", "pretrain", PRETRAIN + ["--save-steps", "0"], "--save-steps 0: must be an integer >= 1", 2),
    ("epochs-zero", "pretrain", PRETRAIN + ["--epochs", "0"], "--epochs 0: must be an integer >= 1", 2),
    ("lr-zero", "pretrain", PRETRAIN + ["--lr", "0"], "--lr 0.0: must be a finite number > 0", 2),
    ("weight-decay-negative", "pretrain", PRETRAIN + ["--weight-decay=-0.1"], "--weight-decay -0.1: must be a finite number >= 0", 2),
    ("grad-accum-zero", "pretrain", PRETRAIN + ["--grad-accum", "0"], "--grad-accum 0: must be an integer >= 1", 2),
    ("heldout-negative", "pretrain", PRETRAIN + ["--heldout-size=-1"], "--heldout-size -1: must be an integer >= 0", 2),
    ("steps-zero", "pretrain", PRETRAIN + ["--steps", "0"], "--steps must be >= 1", 2),
    ("pretrain-protein-into-rnafm", "pretrain", ["--data", "{prot}", "--all", "--out", "{out}"], "looks like protein", 2),
    # --- selection
    ("scores-missing", "select_coreset", ["--scores", "{tmp}/nope", "--strategy", "topk", "--budget", "5", "--out", "{out}"], "nope: directory does not exist", 2),
    ("scores-is-a-file", "select_coreset", ["--scores", "{file}", "--strategy", "topk", "--budget", "5", "--out", "{out}"], "is a file", 2),
    ("scores-unfinished", "select_coreset", ["--scores", "{unfinished}", "--strategy", "topk", "--budget", "5", "--out", "{out}"], "_SUCCESS", 2),
    ("fraction-above-one", "select_coreset", SELECT + ["--fraction", "1.5"], "--fraction 1.5: must be a finite number > 0 and <= 1", 2),
    ("budget-zero", "select_coreset", SELECT + ["--budget", "0"], "--budget 0: must be an integer >= 1", 2),
    ("budget-above-n", "select_coreset", SELECT + ["--budget", "81"], "81", 2),
    ("cci-fraction-one", "select_coreset", SELECT[:3] + ["cci", "--fraction", "1.0", "--out", "{out}"], "--fraction 1.0 of n = 80 scored samples is 80 samples, but cci first drops", 2),
    ("clusters-without-use", "select_coreset", SELECT + ["--budget", "5", "--clusters", "{txt}"], "--clusters is used by --strategy cluster or --dedup", 2),
    ("clusters-table-bad", "select_coreset", SELECT[:3] + ["cci", "--budget", "5", "--dedup", "--clusters", "{txt}", "--data", "{rna}", "--out", "{out}"], "expected representative<TAB>member", 2),
    ("hard-cutoff-one", "select_coreset", SELECT[:3] + ["cci", "--budget", "5", "--hard-cutoff", "1", "--out", "{out}"], "--hard-cutoff 1.0: must be a finite number >= 0 and < 1", 2),
    ("strata-zero", "select_coreset", SELECT[:3] + ["cci", "--budget", "5", "--strata", "0", "--out", "{out}"], "--strata 0: must be an integer >= 1", 2),
    ("select-out-is-a-file", "select_coreset", ["--scores", "{run}", "--strategy", "topk", "--budget", "5", "--out", "{file}"], "is a file, not a directory", 2),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_clear_line(case, ctx, tmp_path, capsys, monkeypatch):
    name, launcher, args, fragment, code = case
    out = tmp_path / "out"
    got, _stdout, err, seconds = invoke(launcher, _expand(args, ctx, out), capsys)
    assert got == code, err
    assert fragment in err, err
    assert "Traceback" not in err, err
    assert seconds < 20, f"{name} took {seconds:.1f} s before failing"
    # nothing written for a refused start: no run config to poison a resume (the few mistakes
    # found while reading the inputs come after the run directory was opened)
    if name not in FOUND_IN_INPUTS:
        assert not (out / "run_config.json").exists()
    if launcher == "select_coreset" and name != "select-out-is-a-file":
        assert not out.exists()          # a failed selection leaves no directory behind


# found while reading the inputs, after the run directory was opened: bad records, and record ids
# (a text --indices) that the corpus does not hold
FOUND_IN_INPUTS = {"bad-records-listed-together", "indices-unknown-ids"}


def test_backend_triton_without_cuda(ctx, tmp_path, capsys, monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    code, _, err, _ = invoke("score", _expand(SCORE + ["--backend", "triton"], ctx, tmp_path / "o"),
                             capsys)
    assert code == 2 and "--backend triton needs a CUDA GPU" in err and "Traceback" not in err


def test_refused_flag_leaves_an_existing_run_config_alone(ctx, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run_config.json").write_text('{"seed": 0}\n')
    code, _, err, _ = invoke("score", _expand(SCORE + ["--damping", "nan"], ctx, out), capsys)
    assert code == 2 and (out / "run_config.json").read_text() == '{"seed": 0}\n'


def test_other_settings_in_the_same_out_are_refused(ctx, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run_config.json").write_text('{"seed": 99}\n')
    np.save(out / "subset.npy", np.arange(3))      # it has produced something: it binds
    code, _, err, _ = invoke("score", _expand(SCORE, ctx, out), capsys)
    assert code == 2 and "made with other settings or inputs" in err and "seed: 99 then" in err
    assert "--overwrite" in err and "Traceback" not in err


# ---------------------------------------------------------------------------- bad records


def test_bad_records_all_listed_in_one_error(ctx, tmp_path):
    from bioprune.engine.data.corpus import CorpusError, load_corpus

    with pytest.raises(CorpusError) as e:
        load_corpus([ctx["bad"]], "rna", tmp_path / "c")
    msg = str(e.value)
    for frag in ("record 2 (id 'b'): invalid character 'X' at position 3",
                 "record 4 (id 'd'): empty record", "record 5 (id 'e'): invalid character '-'",
                 "record 7 (id 'g'): invalid character 'I'", "--on-invalid skip"):
        assert frag in msg, msg


def test_skip_drops_lists_and_counts_bad_records(ctx, tmp_path):
    from bioprune.engine.data.corpus import load_corpus

    c = load_corpus([*ctx["rna"], ctx["bad"]], "rna", tmp_path / "c", on_invalid="skip")
    assert len(c) == 80 + 3 and c.stats["rejected"] == 4
    assert [c.record_id(i) for i in range(80, 83)] == ["a", "c", "f"]
    assert c.stats["inputs"][2]["records"] == 3 and c.stats["inputs"][2]["rejected"] == 4
    with open(tmp_path / "c" / "rejected.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [(r["record"], r["id"]) for r in rows] == [("2", "b"), ("4", "d"), ("5", "e"),
                                                      ("7", "g")]
    assert all(r["file"] == ctx["bad"] for r in rows) and "empty record" in rows[1]["reason"]
    # a cache built with skip is not reused for error mode, and vice versa
    from bioprune.engine.data.corpus import CorpusError

    with pytest.raises(CorpusError, match="on_invalid"):
        load_corpus([*ctx["rna"], ctx["bad"]], "rna", tmp_path / "c")


def test_bom_and_NA(tmp_path):
    from bioprune.engine.data.corpus import load_corpus

    (tmp_path / "bom.fasta").write_bytes(b"\xef\xbb\xbf>x1 desc\nACGU\n>x2\nGGC\n")
    (tmp_path / "na.csv").write_text("id,sequence\nr1,ACGU\nr2,NA\nr3,N\n")
    (tmp_path / "na.tsv").write_bytes(b"\xef\xbb\xbfid\tsequence\nt1\tNA\n")
    c = load_corpus([tmp_path / "bom.fasta", tmp_path / "na.csv", tmp_path / "na.tsv"], "rna",
                    tmp_path / "c")
    assert [c.record_id(i) for i in range(len(c))] == ["x1", "x2", "r1", "r2", "r3", "t1"]
    assert [c.sequence(i) for i in range(len(c))] == ["ACGU", "GGC", "ACGU", "NA", "N", "NA"]


def test_score_with_skip_end_to_end(ctx, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err, _ = invoke("score", ["--data", ctx["bad"], "--molecule", "rna",
                                       "--out", str(out)], capsys)
    assert code == 2 and "4 invalid records" in err   # then the fix into the same --out:
    code, stdout, err, _ = invoke("score", ["--data", ctx["bad"], "--molecule", "rna",
                                            "--on-invalid", "skip", "--finetune-epochs", "0",
                                            "--max-length", "32", "--out", str(out)], capsys)
    assert code == 0, err
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["sequences"] == 3 and m["counts"]["rejected_records"] == 4
    assert m["corpus"]["stats"]["rejected"] == 4
    assert len((out / "rejected.tsv").read_text().splitlines()) == 1 + 4
    # a rerun of the finished run says so and does nothing
    code, stdout, err, seconds = invoke("score", ["--data", ctx["bad"], "--molecule", "rna",
                                                  "--on-invalid", "skip", "--finetune-epochs", "0",
                                                  "--max-length", "32", "--out", str(out)], capsys)
    assert code == 0 and "already finished" in stdout and seconds < 20


# ---------------------------------------------------------------------------- selection


def test_selection_outputs_are_one_unit(ctx, tmp_path, capsys):
    out = tmp_path / "sel"
    code, _, err, _ = invoke("select_coreset", ["--scores", ctx["run"], "--strategy", "topk",
                                                "--budget", "5", "--out", str(out), "--data"],
                             capsys)
    assert code == 0, err                          # --scores RUN: the run directory is accepted
    assert (out / "coreset.fasta").exists() and (out / "score_histogram.png").exists()
    again = ["--scores", ctx["run"] + "/scores", "--strategy", "random", "--budget", "7",
             "--out", str(out), "--no-plot"]
    code, _, err, _ = invoke("select_coreset", again, capsys)
    assert code == 2 and "holds a selection made with other settings" in err
    assert "--overwrite" in err and "Traceback" not in err
    assert len(np.load(out / "coreset.npy")) == 5    # untouched
    code, _, err, _ = invoke("select_coreset", again + ["--overwrite"], capsys)
    assert code == 0, err
    assert len(np.load(out / "coreset.npy")) == 7
    # the earlier selection's FASTA and plot went with it: no mix of two selections
    assert not (out / "coreset.fasta").exists() and not (out / "score_histogram.png").exists()
    assert json.loads((out / "selection.json").read_text())["strategy"] == "random"
    assert not list(out.glob(".selection-*"))
    # the same selection again is fine (same identity)
    code, _, err, _ = invoke("select_coreset", again, capsys)
    assert code == 0, err


def test_selection_refuses_an_unrecorded_earlier_selection(ctx, tmp_path, capsys):
    out = tmp_path / "sel"
    out.mkdir()
    np.save(out / "coreset.npy", np.arange(3))
    code, _, err, _ = invoke("select_coreset", ["--scores", ctx["run"], "--strategy", "topk",
                                                "--budget", "5", "--out", str(out)], capsys)
    assert code == 2 and "holds an earlier selection (coreset.npy)" in err


# ---------------------------------------------------------------------------- locks, ports, bugs


@pytest.mark.subprocess
def test_second_writer_on_the_same_out_is_refused(ctx, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, json, os, sys, time\n"
         f"fd = os.open({str(out / '.bioprune.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\n"
         "os.write(fd, json.dumps({'pid': os.getpid(), 'host': 'h', 'command': 'score.py',"
         " 'started': 'now'}).encode())\n"
         "print('locked', flush=True)\n"
         "time.sleep(60)\n"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _, err, _ = invoke("score", _expand(SCORE, ctx, out), capsys)
        assert code == 2 and "is in use by another bioprune scoring run" in err
        assert f"pid {holder.pid}" in err and "Traceback" not in err
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.subprocess
def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
    from bioprune.engine.runtime import lock

    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (out / lock.LOCK_FILE).write_text(json.dumps({"pid": int(dead), "host": "h"}))
    note = lock.acquire(out, "run")
    try:
        assert note and f"stale lock of pid {dead}" in note
        assert json.loads((out / lock.LOCK_FILE).read_text())["pid"] == os.getpid()
    finally:
        lock.release(out)
    assert (out / lock.LOCK_FILE).read_text() == ""


@pytest.mark.subprocess
def test_rendezvous_port_taken_is_one_line(ctx, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        e = env()
        e.update(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                 MASTER_PORT=str(port))
        p = subprocess.run([sys.executable, str(LAUNCH / "score.py"), "--data", *ctx["rna"],
                            "--out", str(tmp_path / "o")], env=e, capture_output=True, text=True,
                           timeout=120)
    assert p.returncode == 2, p.stderr
    assert f"rendezvous port {port} is already in use" in p.stderr
    assert "deepspeed --master_port" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.slow
@pytest.mark.multirank
@pytest.mark.subprocess
def test_two_jobs_on_one_port_do_not_kill_each_other(ctx, tmp_path):
    """Two 2-rank jobs started together on the same rendezvous port (as two jobs without
    --master_port both get 29500): one finishes with the right coreset, the other ends with the
    one-line port message; neither has a traceback (before: the loser's rank 1 joined the
    winner's group as a duplicate rank and both died)."""
    from pipeline_utils import free_port

    port = str(free_port())
    launcher = str(Path(sys.executable).parent / "deepspeed")
    procs = [subprocess.Popen([launcher, "--num_gpus", "2", "--master_port", port,
                               str(LAUNCH / "select_coreset.py"), "--scores", ctx["run"],
                               "--strategy", "cci", "--budget", "10",
                               "--out", str(tmp_path / f"s{k}")], env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k in range(2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 2], [(r[0], r[2][-1500:]) for r in results]
    loser = next(r for r in results if r[0] == 2)
    assert f"rendezvous port {port} is already in use" in loser[2]
    assert all("Traceback" not in r[2] for r in results)
    winner = next(k for k, r in enumerate(results) if r[0] == 0)
    assert len(np.load(tmp_path / f"s{winner}" / "coreset.npy")) == 10


@pytest.mark.slow
@pytest.mark.multirank
@pytest.mark.subprocess
def test_mpi_without_master_port_picks_a_free_port(ctx, tmp_path):
    # DeepSpeed's MPI discovery would put every job on port 29500; bioprune's rank 0 picks a
    # free port and broadcasts it (MASTER_PORT, when set, is used as given)
    mpiexec = Path(sys.executable).parent / "mpiexec"
    e = env()
    e.pop("MASTER_PORT", None)
    with socket.socket() as s:        # even with 29500 taken
        try:
            s.bind(("", 29500))
            s.listen()
        except OSError:
            pass                      # already taken by someone else: the same situation
        p = subprocess.run([str(mpiexec), "-n", "2", sys.executable,
                            str(LAUNCH / "select_coreset.py"), "--scores", ctx["run"],
                            "--strategy", "cci", "--budget", "10", "--out", str(tmp_path / "s")],
                           env=e, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert len(np.load(tmp_path / "s" / "coreset.npy")) == 10


def test_a_real_bug_keeps_its_traceback(ctx, tmp_path, capsys, monkeypatch):
    import bioprune.launch.score as score

    def boom(_settings):
        raise RuntimeError("a bug")

    monkeypatch.setattr(score, "run_scoring", boom)
    out = tmp_path / "o"
    out.mkdir()
    code, _, err, _ = invoke("score", _expand(SCORE, ctx, out), capsys)
    assert code == 1 and "Traceback" in err and "RuntimeError: a bug" in err
    assert "unexpected error" in err and str(out / "bioprune-error.log") in err
    assert "RuntimeError: a bug" in (out / "bioprune-error.log").read_text()


# ---------------------------------------------------------------------------- pretrain identity


@pytest.mark.slow
@pytest.mark.subprocess
def test_pretrain_other_coreset_refused_finished_run_reruns_cleanly(ctx, tmp_path, capsys):
    out = tmp_path / "pt"
    common = ["--data", *ctx["rna"], "--max-length", "32", "--heldout-size", "4", "--warmup", "2",
              "--micro-batch-size", "8", "--zero-stage", "0", "--epochs", "1", "--out", str(out)]
    from pipeline_utils import run

    run("pretrain.py", ["--indices", ctx["idx1"], *common])   # a real process: DeepSpeed engine
    # rerun of the finished run: says so, exit 0, before any model or DeepSpeed engine
    code, stdout, err, seconds = invoke("pretrain", ["--indices", ctx["idx1"], *common], capsys)
    assert code == 0 and "already finished" in stdout and "Traceback" not in err
    assert seconds < 20
    # another coreset into the same --out: refused, not resumed from the other's checkpoint
    code, _, err, seconds = invoke("pretrain", ["--indices", ctx["idx2"], *common], capsys)
    assert code == 2 and "indices: 20 indices sha256" in err and "--overwrite" in err
    assert "Traceback" not in err and seconds < 20
    # --overwrite starts afresh
    run("pretrain.py", ["--indices", ctx["idx2"], *common, "--overwrite"])
    m = json.loads((out / "manifest.json").read_text())
    assert m["runs"] == 1 and m["counts"]["resumed_from_epoch"] == 0
