"""The study's corpora (engine/experiments/split.py): the held-out part is disjoint from training
and written per input, calibration never touches the held-out part, and the planted known-truth
corpus has the family share, mutation rate and balanced held-out set its config asks for."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from bioprune.engine.data.corpus import load_corpus
from bioprune.engine.experiments.config import DEFAULTS
from bioprune.engine.experiments.split import make_split, mutate


def _fasta(path, prefix, n, length, seed):
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for i in range(n):
            f.write(f">{prefix}{i}\n{''.join(rng.choice(list('ACGU'), length))}\n")
    return str(path)


@pytest.fixture()
def source(tmp_path):
    files = [_fasta(tmp_path / "big.fasta", "b", 300, 40, 0),
             _fasta(tmp_path / "rare.fasta", "r", 40, 30, 1)]
    return files, load_corpus(files, "rna", tmp_path / "cache")


def _cfg(files, **corpus):
    cfg = copy.deepcopy(DEFAULTS)
    cfg["corpus"].update(files=files, heldout_fraction=0.1, **corpus)
    return cfg


def _ids(path):
    return [line[1:].strip() for line in open(path) if line.startswith(">")]


def test_heldout_split_is_disjoint_and_written_per_input(source, tmp_path):
    files, src = source
    info = make_split(_cfg(files), files, src, tmp_path / "data")
    train = np.load(tmp_path / "data" / "train_source_index.npy")
    held = np.load(tmp_path / "data" / "heldout_source_index.npy")
    assert not set(train) & set(held) and len(train) + len(held) == len(src) == info["n_source"]
    assert [p.split("/")[-1] for p in info["heldout_files"]] == ["big.fasta", "rare.fasta"]
    held_ids = _ids(info["heldout_files"][0]) + _ids(info["heldout_files"][1])
    assert held_ids == [src.record_id(i) for i in held]
    assert not set(held_ids) & set(_ids(tmp_path / "data" / "train.fasta"))
    groups = np.load(tmp_path / "data" / "train_group.npy")
    assert (groups == (train >= 300)).all()        # file 1 starts at source index 300
    # deterministic: the same config gives the same split
    again = make_split(_cfg(files), files, src, tmp_path / "again")
    assert again["n_heldout"] == info["n_heldout"]
    assert (np.load(tmp_path / "again" / "heldout_source_index.npy") == held).all()


def test_calibration_evaluates_a_validation_part_and_never_the_heldout(source, tmp_path):
    files, src = source
    make_split(_cfg(files), files, src, tmp_path / "main")
    info = make_split(_cfg(files, calibrate=True), files, src, tmp_path / "cal")
    real_held = set(np.load(tmp_path / "main" / "heldout_source_index.npy"))
    val = set(np.load(tmp_path / "cal" / "heldout_source_index.npy"))
    train = set(np.load(tmp_path / "cal" / "train_source_index.npy"))
    assert val and not val & real_held and not train & real_held and not val & train
    assert len(val) + len(train) + len(real_held) == len(src) and "calibrate" in info["rule"]


def test_planted_corpus_share_mutations_and_balanced_heldout(source, tmp_path):
    files, src = source
    planted = dict(DEFAULTS["corpus"]["planted"], file=files[1], share=0.75,
                   mutation_rate=0.1, heldout_per_file=10)
    info = make_split(_cfg(files, planted=planted), files, src, tmp_path / "data")
    assert info["heldout_per_group"] == {"big": 10, "rare": 10}
    groups = np.load(tmp_path / "data" / "train_group.npy")
    assert len(groups) == info["n_train"] == len(_ids(tmp_path / "data" / "train.fasta"))
    assert (groups == 1).mean() == pytest.approx(0.75, abs=0.01) == info["planted_share"]
    seqs = open(tmp_path / "data" / "train.fasta").read().split(">")[1:]
    by_id = {s.split("\n", 1)[0]: s.split("\n", 1)[1].replace("\n", "") for s in seqs}
    diffs = [np.mean([a != b for a, b in zip(seq, by_id[rid.split("_planted")[0]])])
             for rid, seq in by_id.items() if "_planted" in rid]
    assert len(diffs) == info["planted_copies"] and 0.07 < np.mean(diffs) < 0.13
    groups_doc = json.loads((tmp_path / "data" / "groups.json").read_text())
    assert groups_doc["names"] == ["big", "rare"]


def test_planted_file_must_be_an_input(source, tmp_path):
    files, src = source
    planted = dict(DEFAULTS["corpus"]["planted"], file="other.fasta")
    with pytest.raises(ValueError, match="not one of corpus.files"):
        make_split(_cfg(files, planted=planted), files, src, tmp_path / "data")


def test_mutate_changes_about_rate_of_positions_to_other_letters():
    rng = np.random.default_rng(0)
    seq = "ACGU" * 500
    out = mutate(seq, 0.2, "ACGU", rng)
    changed = np.array([a != b for a, b in zip(seq, out)])
    assert len(out) == len(seq) and 0.17 < changed.mean() < 0.23 and set(out) <= set("ACGU")
