"""launch/evaluate.py and bioprune.engine.evaluation on real data with real (tiny) models."""
from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from bioprune.engine.data.paths import data_dir
from bioprune.engine.evaluation.metrics import greedy_pairs, pair_metrics, parse_dot_bracket
from bioprune.launch.evaluate import main

RNA = data_dir() / "rna"
FAST = ["--no-progress", "--threads", "1", "--probe-epochs", "20"]


def run_cli(tmp_path, *args, name="out"):
    out = tmp_path / name
    assert main([*args, *FAST, "--out", str(out)]) == 0
    doc = json.loads((out / "eval.json").read_text())
    assert (out / "eval.md").exists()
    return doc, out


def fail_cli(capsys, *args) -> str:
    """Exit code 2 and one line: argparse exits by SystemExit, later checks return 2 from main."""
    try:
        code = main([*args, "--no-progress"])
    except SystemExit as e:
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def read_fasta(path: Path) -> list[tuple[str, str]]:
    out, name, seq = [], None, []
    for line in path.read_text().splitlines():
        if line.startswith(">"):
            if name:
                out.append((name, "".join(seq)))
            name, seq = line[1:].split()[0], []
        else:
            seq.append(line.strip())
    out.append((name, "".join(seq)))
    return out


def write_csv(path: Path, rows, header=("id", "sequence", "label", "split")):
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def two_families(tmp_path_factory) -> Path:
    """An easy real task: 5S rRNA (Rfam RF00001) vs tRNA (RF00005), 150 of each, with a split."""
    rows = []
    for label, f in (("5S", "rfam_RF00001.fasta"), ("tRNA", "rfam_RF00005.fasta")):
        for k, (name, seq) in enumerate(read_fasta(RNA / f)[:150]):
            rows.append((name, seq, label, "test" if k % 3 == 0 else "train"))
    return write_csv(tmp_path_factory.mktemp("csv") / "families.csv", rows)


# ---------------------------------------------------------------------------- metrics, parsing

def brute_force(true_pairs, pred_pairs, L):
    t, p = set(true_pairs), set(pred_pairs)
    tp = fp = fn = tn = 0
    for i, j in itertools.combinations(range(L), 2):
        a, b = (i, j) in t, (i, j) in p
        tp += a and b
        fp += b and not a
        fn += a and not b
        tn += not a and not b
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    den = ((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)) ** 0.5
    mcc = (tp * tn - fp * fn) / den if den else 0.0
    return {"precision": prec, "recall": rec, "f1": f1, "mcc": mcc}


def test_dot_bracket_with_pseudoknots_and_pair_metrics():
    s = "((.[[..{.)).A..]]}..a<.>"
    assert parse_dot_bracket(s) == sorted(
        [(0, 10), (1, 9), (3, 16), (4, 15), (7, 17), (12, 20), (21, 23)])
    assert parse_dot_bracket("....") == []
    for bad in ("((.)", "(.))", ".]", "(.x.)"):
        with pytest.raises(ValueError):
            parse_dot_bracket(bad)
    true = parse_dot_bracket(s)
    L = len(s)
    preds = [true, [], [(0, 10), (1, 9), (2, 8), (21, 23)], [(5, 19)], true[:3] + [(11, 14)]]
    for pred in preds:
        got, want = pair_metrics(true, pred, L), brute_force(true, pred, L)
        assert got.keys() == want.keys()
        for k in want:
            assert got[k] == pytest.approx(want[k], abs=1e-12), (pred, k)
    # a hand-made case with known numbers: 2 of 4 predicted pairs right, 2 of 7 true found
    m = pair_metrics(true, [(0, 10), (21, 23), (2, 8), (5, 19)], L)
    assert (m["precision"], m["recall"]) == (0.5, pytest.approx(2 / 7))
    # decoding: one partner per base, loops of at least 3
    prob = np.zeros((8, 8))
    prob[0, 7] = prob[7, 0] = 0.9
    prob[0, 6] = prob[6, 0] = 0.8     # base 0 is taken by (0, 7)
    prob[1, 6] = prob[6, 1] = 0.7
    prob[2, 4] = prob[4, 2] = 0.95    # loop too short
    assert greedy_pairs(prob, 0.5) == [(0, 7), (1, 6)]


# ---------------------------------------------------------------------------------- controls

@pytest.mark.slow
def test_random_label_control_at_chance_true_labels_above(tmp_path, two_families):
    base = ["--model", "rnafm", "--model-size", "tiny", "--init", "random",
            "--tasks", f"csv:{two_families}"]
    true, _ = run_cli(tmp_path, *base, name="true")
    ctrl, _ = run_cli(tmp_path, *base, "--control", "random-labels", name="ctrl")
    t, c = true["tasks"][f"csv:{two_families}"], ctrl["tasks"][f"csv:{two_families}"]
    assert t["kind"] == "classification" and t["control"] is None
    assert c["control"] == "random-labels"
    # even a random encoder's mean-pooled embedding separates 5S rRNA from tRNA
    assert t["metrics"]["acc"]["mean"] > 0.9
    assert len(c["metrics"]["acc"]["values"]) == 3
    # labels drawn for train and test alike: no signal left, chance is ~0.5 on two classes
    assert abs(c["metrics"]["acc"]["mean"] - 0.5) < 0.12, c["metrics"]
    # the 13-class nRC task: chance is 1/13 (classes are near balanced)
    nrc, _ = run_cli(tmp_path, "--model", "rnafm", "--model-size", "tiny", "--init", "random",
                     "--tasks", "rna-type", "--control", "random-labels", "--max-train", "400",
                     "--max-test", "300", "--max-length", "200", name="nrc")
    r = nrc["tasks"]["rna-type"]
    assert (r["n_train"], r["n_test"]) == (400, 300)
    assert r["chance"]["uniform"] == pytest.approx(1 / 13)
    assert abs(r["metrics"]["acc"]["mean"] - 1 / 13) < 0.045, r["metrics"]


# --------------------------------------------------------------------------------- user CSVs

def test_user_csv_classification_and_regression_split_honoured(tmp_path):
    rng = np.random.default_rng(0)
    import pandas as pd

    nrc = pd.read_csv(RNA / "nrc_type.csv")
    nrc = nrc[nrc["label"].isin(["tRNA", "miRNA", "5S_rRNA"])].iloc[rng.permutation(
        (nrc["label"].isin(["tRNA", "miRNA", "5S_rRNA"])).sum())[:90]]
    split = np.where(rng.random(len(nrc)) < 0.3, "test", "train")
    cls = write_csv(tmp_path / "cls.csv", zip(nrc["id"], nrc["sequence"], nrc["label"], split))
    cr = pd.read_csv(RNA / "crispr_ontarget.csv").iloc[:120]
    rsplit = np.where(np.arange(len(cr)) % 4 == 0, "test", "train")
    reg = write_csv(tmp_path / "reg.csv", zip(cr["id"], cr["sequence"], cr["efficiency"], rsplit))
    nosplit = write_csv(tmp_path / "nosplit.csv", zip(cr["id"], cr["sequence"], cr["efficiency"]),
                        header=("id", "sequence", "label"))
    doc, _ = run_cli(tmp_path, "--model", "rnafm", "--model-size", "tiny", "--init", "random",
                     "--tasks", f"csv:{cls},csv:{reg},csv:{nosplit}", "--probe-seeds", "2")
    c, r, n = (doc["tasks"][f"csv:{p}"] for p in (cls, reg, nosplit))
    assert c["kind"] == "classification" and set(c["metrics"]) == {"acc", "macro_f1"}
    assert (c["n_train"], c["n_test"]) == (int((split == "train").sum()),
                                           int((split == "test").sum()))
    assert c["n_classes"] == 3
    assert r["kind"] == "regression" and set(r["metrics"]) == {"spearman", "pearson"}
    assert (r["n_train"], r["n_test"]) == (90, 30)
    assert "honoured exactly" in r["split"]
    assert n["kind"] == "regression" and n["n_train"] + n["n_test"] == 120
    assert "hashed" in n["split"] and 10 <= n["n_test"] <= 40
    for t in (c, r, n):
        for m in t["metrics"].values():
            assert len(m["values"]) == 2 and np.isfinite(m["mean"]) and -1 <= m["mean"] <= 1


def test_errors_are_one_line(tmp_path, capsys):
    base = ["--model", "rnafm", "--model-size", "tiny", "--out", str(tmp_path / "e")]
    assert "unknown task 'rna-typo'" in fail_cli(capsys, *base, "--init", "random", "--tasks",
                                                 "rna-typo")
    err = fail_cli(capsys, *base, "--init", "random", "--tasks", f"csv:{tmp_path / 'none.csv'}")
    assert "none.csv" in err and "no such file" in err
    nolabel = write_csv(tmp_path / "nolabel.csv", [("a", "ACGU", "train")], ("id", "sequence",
                                                                             "split"))
    assert "'label'" in fail_cli(capsys, *base, "--init", "random", "--tasks", f"csv:{nolabel}")
    bad = write_csv(tmp_path / "bad.csv", [("a", "ACGUX", "x", "train")])
    assert "row 2" in fail_cli(capsys, *base, "--init", "random", "--tasks", f"csv:{bad}")
    assert "protein task" in fail_cli(capsys, *base, "--init", "random", "--tasks", "protein-loc")
    # weights of another size do not fit
    from bioprune.engine.models import build_model, save_model

    save_model(build_model("rnafm", "tiny"), tmp_path / "w")
    err = fail_cli(capsys, "--model", "rnafm", "--model-size", "mid", "--out", str(tmp_path / "e"),
                   "--weights", str(tmp_path / "w" / "model.safetensors"), "--tasks", "rna-type")
    assert "--weights" in err and "do not fit" in err
    err = fail_cli(capsys, "--model", "rnafm", "--model-size", "mid", "--out", str(tmp_path / "e"),
                   "--run", str(tmp_path / "w"), "--tasks", "rna-type")
    assert "--run" in err and "tiny" in err
    assert "mlm" in fail_cli(capsys, *base, "--init", "random", "--tasks", "mlm")


# ------------------------------------------------------------------------------- end to end

def test_cli_end_to_end_schema(tmp_path):
    """A saved model through --run DIR (its final/), with the floor, on rna-type, rna-ss, mlm."""
    import torch

    from bioprune.engine.models import build_model, save_model

    torch.manual_seed(1)
    save_model(build_model("rnafm", "tiny"), tmp_path / "run" / "final")
    doc, out = run_cli(
        tmp_path, "--model", "rnafm", "--model-size", "tiny", "--run", str(tmp_path / "run"),
        "--tasks", "rna-type,rna-ss,mlm", "--max-train", "60", "--max-test", "40",
        "--max-length", "200", "--ss-max-length", "80", "--ss-epochs", "2",
        "--mlm-data", str(RNA / "rfam_RF00005.fasta"), "--mlm-max", "50", "--floor",
        "--mlm-cache", str(tmp_path / "cache"))
    assert set(doc["tasks"]) == {"rna-type", "rna-ss", "mlm"}
    assert doc["encoder"]["source"] == "run" and doc["encoder"]["path"].endswith("final")
    expected = {"rna-type": {"acc", "macro_f1"}, "rna-ss": {"precision", "recall", "f1", "mcc"},
                "mlm": {"loss", "ppl", "loss_macro", "loss@rfam_RF00005"}}
    for section in (doc, doc["floor"]):
        for name, t in section["tasks"].items():
            assert set(t["metrics"]) == expected[name]
            for m in t["metrics"].values():
                assert set(m) == {"mean", "std", "values"} and len(m["values"]) == 3
                assert m["mean"] == pytest.approx(np.mean(m["values"]))
            assert isinstance(t["n_train"], int) and isinstance(t["n_test"], int)
            assert isinstance(t["frozen"], bool) and "head" in t
    t = doc["tasks"]
    assert (t["rna-type"]["n_train"], t["rna-type"]["n_test"]) == (60, 40)
    assert 0 <= t["rna-type"]["metrics"]["acc"]["mean"] <= 1
    assert t["rna-type"]["training"]["probe_seeds"] == [0, 1, 2]
    assert t["rna-ss"]["n_train"] == 60 and "hashed" in t["rna-ss"]["split"]
    assert t["mlm"]["n_train"] == 0 and t["mlm"]["n_test"] == 50
    assert t["mlm"]["metrics"]["ppl"]["mean"] > 1 and t["mlm"]["metrics"]["loss"]["mean"] > 0
    assert doc["floor"]["encoder"]["source"] == "random"
    # the floor is another encoder: its numbers differ from the saved model's
    floor_loss = doc["floor"]["tasks"]["mlm"]["metrics"]["loss"]["values"]
    assert floor_loss != t["mlm"]["metrics"]["loss"]["values"]
    man = doc["manifest"]
    assert {"rna-type", "rna-ss", "mlm", "total"} <= set(man["timings_s"])
    assert man["versions"]["torch"] and man["versions"]["accelerate"]
    md = (out / "eval.md").read_text()
    assert "| rna-ss | f1 |" in md and "floor" in md


def test_protein_tasks_and_finetune(tmp_path):
    doc, _ = run_cli(tmp_path, "--model", "esmc", "--model-size", "tiny", "--init", "random",
                     "--tasks", "protein-ss3,protein-loc", "--max-train", "40", "--max-test", "30",
                     "--max-length", "150", "--probe-seeds", "2", "--token-epochs", "3")
    ss3, loc = doc["tasks"]["protein-ss3"], doc["tasks"]["protein-loc"]
    assert set(ss3["metrics"]) == {"acc"} and ss3["n_test_residues"] > 30
    assert ss3["embedding"]["crop"] == "head" and loc["embedding"]["crop"] == "ends"
    assert loc["embedding"]["cropped"] > 0 and loc["head"]["type"] == "mlp"
    ft, _ = run_cli(tmp_path, "--model", "esmc", "--model-size", "tiny", "--init", "random",
                    "--tasks", "protein-loc", "--finetune", "--finetune-epochs", "1",
                    "--max-train", "24", "--max-test", "16", "--max-length", "100",
                    "--probe-seeds", "1", name="ft")
    assert ft["tasks"]["protein-loc"]["frozen"] is False and ft["frozen"] is False


def test_mlm_defaults_to_a_pretraining_runs_corpus_and_heldout(tmp_path):
    """--run DIR of launch/pretrain.py: weights from final/, corpus from manifest.json,
    heldout.npy."""
    from bioprune.engine.models import build_model, save_model

    run = tmp_path / "pt"
    save_model(build_model("rnafm", "tiny"), run / "final")
    fasta = RNA / "rfam_RF00005.fasta"
    (run / "manifest.json").write_text(json.dumps(
        {"config": {"data": [str(fasta)], "column": "sequence", "id_column": None, "seed": 3}}))
    np.save(run / "heldout.npy", np.arange(5, 25, dtype=np.int64))
    doc, _ = run_cli(tmp_path, "--model", "rnafm", "--model-size", "tiny", "--run", str(run),
                     "--tasks", "mlm", "--probe-seeds", "2")
    m = doc["tasks"]["mlm"]
    assert m["indices"].endswith("heldout.npy") and m["data"] == [str(fasta)]
    assert (m["n_test"], m["crop_seed"], m["mask_seeds"]) == (20, 3, [3, 4])
    assert m["metrics"]["loss"]["values"][0] != m["metrics"]["loss"]["values"][1]


@pytest.mark.slow
def test_mlm_refuses_a_pretraining_runs_corpus_edited_since(tmp_path, capsys):
    """heldout.npy holds corpus positions: when the run's corpus files were reordered since
    pretraining (same records, same count), --run must refuse instead of scoring other records."""
    from bioprune.engine.data.corpus import load_corpus
    from bioprune.engine.models import build_model, save_model

    recs = [(f">r{k}", s) for k, s in enumerate(["ACGUAGCUAGC", "GGGAAACCCUU", "AUAUGCGCAUAU",
                                                  "CCGGAAUUCCGG", "UUAGCUAGGCAU", "GACUGACUAGCA"])]
    fasta = tmp_path / "corpus.fasta"
    fasta.write_text("".join(f"{h}\n{s}\n" for h, s in recs))
    digest = load_corpus([fasta], "rna", tmp_path / "c0").content_digest()
    run = tmp_path / "pt"
    save_model(build_model("rnafm", "tiny"), run / "final")
    (run / "manifest.json").write_text(json.dumps(
        {"config": {"data": [str(fasta)], "column": "sequence", "id_column": None, "seed": 0},
         "corpus_digest": digest}))
    np.save(run / "heldout.npy", np.arange(0, 3, dtype=np.int64))
    base = ["--model", "rnafm", "--model-size", "tiny", "--run", str(run), "--tasks", "mlm",
            "--probe-seeds", "1"]
    doc, _ = run_cli(tmp_path, *base, name="same")           # unchanged corpus: scored
    assert doc["tasks"]["mlm"]["n_test"] == 3
    fasta.write_text("".join(f"{h}\n{s}\n" for h, s in reversed(recs)))   # reordered since
    err = fail_cli(capsys, *base, *FAST, "--out", str(tmp_path / "moved"))
    assert "not the one" in err and "content digest" in err and str(fasta) in err


@pytest.mark.slow
def test_mlm_all_scores_every_record_with_fixed_masks_per_file_group(tmp_path):
    """A study's held-out set: every record of every file (--mlm-all), masks fixed by
    --mlm-mask-seed whatever the model's --seed, and one loss per file plus their macro mean."""
    from bioprune.engine.models import build_model, save_model

    save_model(build_model("rnafm", "tiny"), tmp_path / "run" / "final")
    small = tmp_path / "small.fasta"     # two files of very different sizes
    small.write_text(">a\nACGUACGUAGCUAGCUAGCAUCGAUCGA\n>b\nGGGAAACCCUUUGGGAAACCC\n"
                     ">c\nAUAUAUAUGCGCGCGCAUAUAUGC\n")
    big = RNA / "rfam_RF00010.fasta"
    docs = [run_cli(tmp_path, "--model", "rnafm", "--model-size", "tiny",
                    "--run", str(tmp_path / "run"), "--tasks", "mlm", "--mlm-data", str(big),
                    str(small), "--mlm-all", "--mlm-mask-seed", "7", "--probe-seeds", "2",
                    "--seed", str(seed), "--mlm-cache", str(tmp_path / "cache"),
                    name=f"s{seed}")[0]["tasks"]["mlm"] for seed in (0, 5)]
    m = docs[0]
    n_big = sum(1 for line in big.read_text().splitlines() if line.startswith(">"))
    assert m["n_test"] == n_big + 3 and m["groups"] == {"rfam_RF00010": n_big, "small": 3}
    assert m["mask_seeds"] == [7, 8] and m["crop_seed"] == 7
    # the same model scored under two training seeds: same sequences, same masks, same numbers
    assert docs[1]["metrics"] == m["metrics"]
    mt = m["metrics"]
    for k in range(2):
        big_l, small_l = mt["loss@rfam_RF00010"]["values"][k], mt["loss@small"]["values"][k]
        assert mt["loss_macro"]["values"][k] == pytest.approx((big_l + small_l) / 2)
        assert mt["loss"]["values"][k] == pytest.approx((n_big * big_l + 3 * small_l) / (n_big + 3))
    assert mt["loss"]["values"][0] != mt["loss"]["values"][1]   # two mask seeds
