"""launch/pretrain.py: ZeRO-3 on the real DeepSpeed engine, checkpoints, resume, export."""
import csv
import json

import numpy as np
import pytest
import torch

from bioprune.engine.models import build_model, load_saved_model
from pipeline_utils import data_dir, read_scalars, run, small_corpus

# every test runs launch/pretrain.py (one rank)
pytestmark = [pytest.mark.skipif(not (data_dir() / "rna").exists(), reason="no sample data"),
              pytest.mark.subprocess]


@pytest.mark.slow
def test_pretrain_zero3_resume_and_export(tmp_path):
    files = small_corpus(tmp_path, n_fasta=30, n_csv=30)
    idx = np.arange(0, 60, 2, dtype=np.int64)
    np.save(tmp_path / "coreset.npy", idx)
    out = tmp_path / "pt"
    common = ["--data", *files, "--model", "rnafm", "--model-size", "tiny", "--max-length", "64",
              "--indices", str(tmp_path / "coreset.npy"), "--heldout-size", "6", "--warmup", "3",
              "--micro-batch-size", "4", "--zero-stage", "3", "--out", str(out)]
    run("pretrain.py", [*common, "--epochs", "1"])
    first = json.loads((out / "manifest.json").read_text())
    assert first["counts"]["resumed_from_epoch"] == 0
    run("pretrain.py", [*common, "--epochs", "2"])   # resumes after epoch 0's checkpoint
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["resumed_from_epoch"] == 1 and m["runs"] == 2
    assert "zero3" in m["ds_config"]
    heldout = np.load(out / "heldout.npy")
    assert len(heldout) == 6
    assert m["counts"]["train"] == len(np.setdiff1d(idx, heldout))
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert all(float(r["heldout_ppl"]) > 1 and float(r["heldout_loss"]) > 0 for r in rows)
    assert list((out / "tensorboard" / "pretrain").glob("events.out.tfevents.*"))
    trained = load_saved_model(out / "final")   # a plain state dict, no DeepSpeed needed
    torch.manual_seed(0)
    fresh = build_model("rnafm", "tiny")
    diff = [n for n, p in trained.module.state_dict().items()
            if not torch.equal(p, fresh.module.state_dict()[n])]
    assert len(diff) > 10


def test_pretrain_rejects_indices_outside_corpus(tmp_path):
    files = small_corpus(tmp_path, n_fasta=5, n_csv=5)
    np.save(tmp_path / "bad.npy", np.array([0, 3, 99], dtype=np.int64))
    p = run("pretrain.py", ["--data", *files, "--indices", str(tmp_path / "bad.npy"),
                            "--out", str(tmp_path / "o")], check=False)
    assert p.returncode == 2 and "outside the corpus of 10" in p.stderr


@pytest.mark.slow
def test_pretrain_refuses_a_coreset_selected_on_another_corpus(tmp_path):
    """Indices are corpus positions: the same records in another order pass the range checks,
    so the coreset's selection.json carries the scored corpus's digest and pretrain compares."""
    from bioprune.engine.data.corpus import load_corpus

    files = small_corpus(tmp_path, n_fasta=6, n_csv=6)
    sel = tmp_path / "sel"
    sel.mkdir()
    np.save(sel / "coreset.npy", np.array([0, 3, 5], dtype=np.int64))
    digest = load_corpus(files, "rna", tmp_path / "c").content_digest()
    (sel / "selection.json").write_text(json.dumps({"corpus_digest": digest}))
    args = ["--indices", str(sel / "coreset.npy"), "--model", "rnafm", "--model-size", "tiny",
            "--max-length", "32", "--steps", "1", "--heldout-size", "1"]
    p = run("pretrain.py", ["--data", *files[::-1], *args, "--out", str(tmp_path / "o")],
            check=False)
    assert p.returncode == 2 and "selected on another corpus" in p.stderr and digest in p.stderr
    run("pretrain.py", ["--data", *files, *args, "--out", str(tmp_path / "ok")])   # the scored one


def _final_state(out) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "final" / "model.safetensors"))


def _epoch_rows(out) -> list[tuple[int, int, float]]:
    with open(out / "metrics.csv") as f:
        return [(int(r["epoch"]), int(r["step"]), float(r["train_loss"]))
                for r in csv.DictReader(f)]


@pytest.mark.slow
def test_pretrain_extended_steps_match_an_unbroken_run(tmp_path):
    # 54 training sequences in micro-batches of 8: 7 steps an epoch. 17 steps end 3 steps into
    # epoch 2; the short run stops 2 steps into epoch 1, so the extension must finish epoch 1
    # before epoch 2 (the bug: it went on at epoch 2 and stopped at 16 steps, on another order).
    files = small_corpus(tmp_path, n_fasta=30, n_csv=30)
    common = ["--data", *files, "--model", "rnafm", "--model-size", "tiny", "--max-length", "64",
              "--all", "--heldout-size", "6", "--warmup", "3", "--micro-batch-size", "8",
              "--seed", "1"]
    unbroken, extended = tmp_path / "unbroken", tmp_path / "extended"
    run("pretrain.py", [*common, "--out", str(unbroken), "--steps", "17"])
    run("pretrain.py", [*common, "--out", str(extended), "--steps", "9", "--report-to", "none"])
    assert _epoch_rows(extended)[-1][:2] == (1, 9)
    assert not (extended / "tensorboard").exists()          # none: no tracker files at all
    # another --report-to changes no result: the run resumes (tensorboard, the default)
    run("pretrain.py", [*common, "--out", str(extended), "--steps", "17"])

    a = json.loads((unbroken / "manifest.json").read_text())
    b = json.loads((extended / "manifest.json").read_text())
    assert a["counts"]["steps"] == b["counts"]["steps"] == 17
    assert b["runs"] == 2 and b["counts"]["resumed_from_step"] == 9
    assert b["counts"]["resumed_from_epoch"] == 1
    # the same batches in the same order: every epoch's step count and mean training loss agree
    # (the resumed epoch 1 carries the loss of its first 2 steps over)
    rows_a, rows_b = _epoch_rows(unbroken), _epoch_rows(extended)
    assert [r[:2] for r in rows_a] == [r[:2] for r in rows_b] == [(0, 7), (1, 14), (2, 17)]
    assert np.allclose([r[2] for r in rows_a], [r[2] for r in rows_b], rtol=0, atol=1e-6)
    wa, wb = _final_state(unbroken), _final_state(extended)
    assert wa.keys() == wb.keys()
    off = {k: (wa[k] - wb[k]).abs().max().item() for k in wa if not torch.equal(wa[k], wb[k])}
    assert all(torch.allclose(wa[k], wb[k], rtol=0, atol=1e-6) for k in wa), off
    # TensorBoard: a train loss per optimizer step, each epoch's metrics at the step ending it
    tb = read_scalars(unbroken / "tensorboard" / "pretrain")
    assert [step for step, _ in tb["train/loss"]] == list(range(1, 18))
    assert [step for step, _ in tb["epoch/heldout_loss"]] == [7, 14, 17]
    assert np.allclose([v for _, v in tb["epoch/train_loss"]], [r[2] for r in rows_a], rtol=1e-6)
    resumed = read_scalars(extended / "tensorboard" / "pretrain")
    assert [step for step, _ in resumed["train/loss"]] == list(range(10, 18))

    # --steps may grow, not shrink below the checkpoint; any other setting still refuses the
    # directory; neither refusal touches the finished run's manifest
    p = run("pretrain.py", [*common, "--out", str(extended), "--steps", "12"], check=False)
    assert p.returncode == 2 and "checkpointed at step 17, past --steps 12" in p.stderr
    p = run("pretrain.py", [*common, "--out", str(extended), "--steps", "20", "--lr", "3e-4"],
            check=False)
    assert p.returncode == 2 and "other settings" in p.stderr
    assert json.loads((extended / "manifest.json").read_text()) == b


def test_sigterm_checkpoints_mid_epoch_and_resumes_like_an_unbroken_run(tmp_path):
    """Preemption: --save-steps checkpoints every N steps (only the newest K kept); SIGTERM (a
    scheduler's time limit, Slurm's --signal) checkpoints at the current step and exits 143; the
    rerun resumes there and ends with the unbroken run's weights and epoch losses."""
    import signal
    import subprocess
    import time

    from pipeline_utils import command, env

    files = small_corpus(tmp_path, n_fasta=30, n_csv=30)
    common = ["--data", *files, "--model", "rnafm", "--model-size", "tiny", "--max-length", "64",
              "--all", "--heldout-size", "6", "--warmup", "3", "--micro-batch-size", "8",
              "--seed", "2", "--steps", "60", "--save-steps", "4", "--save-total-limit", "2"]
    unbroken, stopped = tmp_path / "unbroken", tmp_path / "stopped"
    run("pretrain.py", [*common, "--out", str(unbroken)])
    proc = subprocess.Popen(command("pretrain.py", [*common, "--out", str(stopped)]), env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    progress = stopped / "checkpoints" / "progress.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads(progress.read_text())["step"] >= 8:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, (proc.returncode, err[-2000:])
    assert "stopped by signal 15" in err and "Traceback" not in err
    step = json.loads(progress.read_text())["step"]
    assert 8 <= step < 60 and f"checkpointed at step {step}" in out
    tags = sorted(d.name for d in (stopped / "checkpoints").iterdir() if d.is_dir())
    assert len(tags) <= 2, tags                                   # --save-total-limit 2
    run("pretrain.py", [*common, "--out", str(stopped)])
    m = json.loads((stopped / "manifest.json").read_text())
    assert m["counts"]["steps"] == 60 and m["counts"]["resumed_from_step"] == step
    rows_a, rows_b = _epoch_rows(unbroken), _epoch_rows(stopped)
    assert [r[:2] for r in rows_a] == [r[:2] for r in rows_b]
    assert np.allclose([r[2] for r in rows_a], [r[2] for r in rows_b], rtol=0, atol=1e-6)
    wa, wb = _final_state(unbroken), _final_state(stopped)
    assert all(torch.allclose(wa[k], wb[k], rtol=0, atol=1e-6) for k in wa)


def test_indices_as_record_ids_train_the_same_model(tmp_path):
    """--indices with a text list of record ids (e.g. coreset.tsv's id column) trains exactly
    what the same records given as corpus indices train."""
    from bioprune.engine.data.corpus import load_corpus

    files = small_corpus(tmp_path, n_fasta=20, n_csv=20)
    corpus = load_corpus(files, "rna", tmp_path / "cache")
    idx = np.arange(3, 40, 3, dtype=np.int64)
    np.save(tmp_path / "core.npy", idx)
    (tmp_path / "core.txt").write_text("".join(f"{corpus.record_id(int(i))}\n" for i in idx[::-1]))
    common = ["--data", *files, "--model", "rnafm", "--model-size", "tiny", "--max-length", "64",
              "--heldout-size", "0", "--warmup", "2", "--micro-batch-size", "4", "--seed", "3",
              "--steps", "4"]
    run("pretrain.py", [*common, "--indices", str(tmp_path / "core.npy"), "--out",
                        str(tmp_path / "by_index")])
    run("pretrain.py", [*common, "--indices", str(tmp_path / "core.txt"), "--out",
                        str(tmp_path / "by_id")])
    wa, wb = _final_state(tmp_path / "by_index"), _final_state(tmp_path / "by_id")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
