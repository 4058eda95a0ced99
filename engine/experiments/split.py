"""The study's corpora: which source records are trained on and which are held out, written once.

Three modes, all deterministic functions of the config (hash keys of the source index, never
``random``):

* **held-out** (default): record i is held out iff uniform(hash(heldout_seed, i)) < fraction.
* **calibrate** (``corpus.calibrate = true``): the held-out records are dropped entirely and a
  validation part carved from the rest plays the held-out role, so a calibration sweep never
  sees the held-out part that the verdicts are read on.
* **planted** (``[corpus.planted]``): the known-truth corpus. A family-balanced held-out set (the
  same number of records from every input file), then one family (``file``) expanded with
  point-mutated copies of its training records until it is ``share`` of the training corpus,
  as tRNA and rRNA dominate real RNA corpora. Coverage-aware selection should keep the rare
  families that a uniform sample of such a corpus mostly misses.

Outputs (``OUT/data``): ``train.fasta``; ``heldout/<group>.fasta``, one file per input so the
mlm task reports a loss per source (``loss@GROUP``) and their macro mean; ``train_group.npy``
(the group of every training record, for the composition table) and ``groups.json``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bioprune.engine.evaluation.mlm import group_names
from bioprune.engine.io.atomic import atomic_path, save_npy, write_json
from bioprune.engine.runtime.hashing import HELDOUT, hash_keys, uniform

# hash streams of the study's own draws (apart from the pretrain launcher's held-out draw)
HELDOUT_STREAM = HELDOUT + 100
VALIDATION_STREAM = HELDOUT + 101
PLANT_STREAM = HELDOUT + 102


def _write_fasta(records, path: Path) -> int:
    """``records``: iterable of (header id, sequence). Atomic, 60 residues per line."""
    n = 0
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            for rid, seq in records:
                f.write(f">{rid}\n")
                for s in range(0, len(seq), 60):
                    f.write(seq[s:s + 60] + "\n")
                n += 1
    return n


def _balanced_heldout(src, n_files: int, per_file: int, seed: int) -> np.ndarray:
    """The ``per_file`` records of smallest hash key in every input file (all of a smaller file
    would leave it nothing to train on: at most half of a file is held out)."""
    held = []
    for k in range(n_files):
        lo, hi = src.file_range(k)
        idx = np.arange(lo, hi)
        take = min(per_file, (hi - lo) // 2)
        keys = hash_keys(seed, idx, HELDOUT_STREAM)
        held.append(np.sort(idx[np.argsort(keys, kind="stable")[:take]]))
    return np.concatenate(held).astype(np.int64)


def mutate(seq: str, rate: float, alphabet: str, rng: np.random.Generator) -> str:
    """Point substitutions: each position changes with probability ``rate`` to another letter."""
    s = np.frombuffer(seq.encode(), dtype=np.uint8).copy()
    hit = np.flatnonzero(rng.random(len(s)) < rate)
    letters = np.frombuffer(alphabet.encode(), dtype=np.uint8)
    for p in hit:
        choices = letters[letters != s[p]]
        s[p] = choices[rng.integers(len(choices))]
    return s.tobytes().decode()


def make_split(cfg: dict, files: list[str], src, data_dir: Path) -> dict:
    """Write the training corpus and the held-out files; return the split's summary."""
    c = cfg["corpus"]
    n = len(src)
    names = group_names(files)
    file_of = src.file_of(np.arange(n))
    planted = c["planted"] if c["planted"]["file"] else {}
    if planted:
        held = _balanced_heldout(src, len(files), int(planted["heldout_per_file"]),
                                 c["heldout_seed"])
        rule = (f"family-balanced: the {planted['heldout_per_file']} records of smallest "
                "hash(heldout_seed, source index) key of every input (at most half of it)")
    else:
        u = uniform(hash_keys(c["heldout_seed"], np.arange(n), HELDOUT_STREAM))
        held = np.flatnonzero(u < c["heldout_fraction"]).astype(np.int64)
        rule = ("held out iff uniform(hash(heldout_seed, source index, stream HELDOUT+100)) < "
                "heldout_fraction")
    train = np.setdiff1d(np.arange(n), held).astype(np.int64)
    if c.get("calibrate"):
        # the real held-out part is dropped; a validation part of the rest stands in for it
        v = uniform(hash_keys(c["heldout_seed"], train, VALIDATION_STREAM))
        held, train = train[v < c["heldout_fraction"]], train[v >= c["heldout_fraction"]]
        rule += ("; calibrate: those are dropped and the validation part (uniform(hash(..., "
                 "stream HELDOUT+101)) < heldout_fraction of the rest) is evaluated instead")

    records = [(src.record_id(i), src.sequence(i)) for i in train]
    groups = list(file_of[train])
    info = {}
    if planted:
        if planted["file"] not in c["files"]:
            raise ValueError(f"corpus.planted.file {planted['file']!r} is not one of corpus.files")
        fam = c["files"].index(planted["file"])
        fam_train = train[file_of[train] == fam]
        others = int(len(train) - len(fam_train))
        share = float(planted["share"])
        want = int(round(share / (1 - share) * others)) - len(fam_train)
        if want <= 0 or not len(fam_train):
            raise ValueError(f"corpus.planted: {planted['file']} is already {share:.0%} or more "
                             "of the training corpus (or has no training records)")
        rng = np.random.default_rng([int(planted.get("seed", 0)), PLANT_STREAM])
        parents = fam_train[rng.integers(len(fam_train), size=want)]
        alphabet = "ACGU" if src.molecule == "rna" else "ACDEFGHIKLMNPQRSTVWY"
        rate = float(planted["mutation_rate"])
        for k, i in enumerate(parents):
            records.append((f"{src.record_id(i)}_planted{k}",
                            mutate(src.sequence(i), rate, alphabet, rng)))
        groups += [fam] * want
        info = {"planted_family": names[fam], "planted_copies": int(want),
                "planted_share": round((len(fam_train) + want) / len(records), 4),
                "mutation_rate": rate}
        rule += (f"; planted: {want} point-mutated copies (rate {rate}) of {names[fam]}'s "
                 f"training records, to {share:.0%} of the training corpus")

    _write_fasta(records, data_dir / "train.fasta")
    heldout_files = []
    for k, name in enumerate(names):
        part = held[file_of[held] == k]
        if len(part):
            path = data_dir / "heldout" / f"{name}.fasta"
            _write_fasta(((src.record_id(i), src.sequence(i)) for i in part), path)
            heldout_files.append(str(path))
    save_npy(data_dir / "train_source_index.npy", train)
    save_npy(data_dir / "heldout_source_index.npy", held)
    save_npy(data_dir / "train_group.npy", np.asarray(groups, dtype=np.int32))
    write_json(data_dir / "groups.json", {"names": names, "files": files})
    return {"n_source": n, "n_train": len(records), "n_heldout": int(len(held)),
            "heldout_per_group": {names[k]: int((file_of[held] == k).sum())
                                  for k in range(len(files))},
            "heldout_files": heldout_files, "files": files, "rule": rule, **info}


def heldout_files(data_dir: Path) -> list[str]:
    """The held-out FASTA files the split wrote, in input order."""
    done = json.loads((Path(data_dir) / "_DONE.json").read_text())
    return list(done["heldout_files"])
