"""launch/pretrain.py: ZeRO-3 on the real DeepSpeed engine, checkpoints, resume, export."""
import csv
import json

import numpy as np
import pytest
import torch

from bioprune.engine.models import build_model, load_saved_model
from pipeline_utils import data_dir, run, small_corpus

pytestmark = pytest.mark.skipif(not (data_dir() / "rna").exists(), reason="no sample data")


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
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
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
