"""Downstream tasks: read a data file, validate and normalise its sequences, fix the splits.

A task is a list of rows (normalised residue bytes and a target each) plus one or more folds
(train rows, test rows) over them. Rows never move between the train and the test side of a
fold: subsampling (``--max-train``/``--max-test``) only drops rows, by the smallest hash keys of
(``--split-seed``, row number), so it is the same for every encoder.
"""
from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bioprune.engine.data.alphabets import get_alphabet
from bioprune.engine.data.paths import data_dir
from bioprune.engine.evaluation.metrics import parse_dot_bracket
from bioprune.engine.runtime import hashing

TEST_FRACTION = 0.2
STREAM_TRAIN, STREAM_TEST = 101, 102   # hashing streams of the --max-train/--max-test subsamples
REGRESSION_MIN_DISTINCT = 20


class EvalError(Exception):
    """A one-line user error (bad flag, missing file, malformed data)."""


@dataclass
class Fold:
    name: str
    train: np.ndarray   # row numbers
    test: np.ndarray


@dataclass
class TaskData:
    name: str
    kind: str                       # classification | regression | token | pairs | mlm
    seqs: list = field(default_factory=list)       # normalised residues (bytes) per row
    targets: list | np.ndarray = field(default_factory=list)
    folds: list = field(default_factory=list)
    classes: list = field(default_factory=list)
    head: str = "linear"            # linear | mlp | pairwise | mlm
    info: dict = field(default_factory=dict)


def seq_fraction(seq: bytes, seed: int) -> float:
    """A uniform number in [0, 1) fixed by (seed, sequence): identical sequences share a side."""
    h = hashlib.blake2b(seq, digest_size=8, key=str(int(seed)).encode()).digest()
    return int.from_bytes(h, "little") / 2.0 ** 64


def hashed_split(seqs, seed: int, fraction: float = TEST_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    u = np.array([seq_fraction(s, seed) for s in seqs])
    return np.flatnonzero(u >= fraction), np.flatnonzero(u < fraction)


def subsample(rows: np.ndarray, cap: int | None, seed: int, stream: int) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.int64)
    if cap is None or len(rows) <= cap:
        return rows
    keys = hashing.hash_keys(seed, rows, stream)
    return np.sort(rows[np.argsort(keys, kind="stable")[:cap]])


def _read_csv(path: Path, what: str):
    import pandas as pd

    if not path.exists():
        raise EvalError(f"{what}: {path}: no such file")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as e:  # noqa: BLE001 - pandas raises many kinds
        raise EvalError(f"{what}: {path}: cannot read as CSV ({e})") from None


def _need(df, cols, path, what):
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise EvalError(f"{what}: {path}: no {', '.join(repr(c) for c in missing)} column "
                        f"(columns: {', '.join(df.columns)})")


def _normalise(seqs, molecule: str, path, what) -> list[bytes]:
    alpha = get_alphabet(molecule)
    out = []
    for r, s in enumerate(seqs):
        try:
            out.append(alpha.normalize(s))
        except ValueError as e:
            raise EvalError(f"{what}: {path}: row {r + 2} (sequence): {e} "
                            f"(a {molecule} task)") from None
    return out


def _encode(labels) -> tuple[np.ndarray, list]:
    classes = sorted(set(labels))
    lut = {c: i for i, c in enumerate(classes)}
    return np.array([lut[c] for c in labels], dtype=np.int64), classes


def _finish(task: TaskData, s) -> TaskData:
    """Apply --max-train/--max-test (rna-ss*: --ss-max-train/--ss-max-test) to every fold and
    record the counts."""
    cap_train, cap_test = s.max_train, s.max_test
    if task.kind == "pairs":
        cap_train = s.ss_max_train or cap_train
        cap_test = s.ss_max_test or cap_test
    for f in task.folds:
        f.train = subsample(f.train, cap_train, s.split_seed, STREAM_TRAIN)
        f.test = subsample(f.test, cap_test, s.split_seed, STREAM_TEST)
    task.info["n_train"] = int(sum(len(f.train) for f in task.folds) // max(len(task.folds), 1))
    task.info["n_test"] = int(sum(len(f.test) for f in task.folds) // max(len(task.folds), 1))
    if len(task.folds) > 1:
        task.info["folds"] = {f.name: {"n_train": len(f.train), "n_test": len(f.test)}
                              for f in task.folds}
    return task


def _file_split(df, path, what) -> tuple[np.ndarray, np.ndarray, dict]:
    split = df["split"].str.strip().str.lower().to_numpy()
    ignored = {"valid", "validation", "val", "dev"}
    bad = sorted(set(split) - {"train", "test"} - ignored)
    if bad:
        raise EvalError(f"{what}: {path}: split column has {bad[0]!r}; expected train or test "
                        f"({'/'.join(sorted(ignored))} rows are ignored)")
    train, test = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
    if not len(train) or not len(test):
        raise EvalError(f"{what}: {path}: the split column needs both train and test rows")
    n_ignored = int(np.isin(split, list(ignored)).sum())
    if n_ignored:   # documented handling, but never silent: validation rows are not used
        print(f"warning: {what}: {path}: {n_ignored:,} rows with split "
              f"{'/'.join(sorted(set(split) & ignored))} ignored (only train and test are used)",
              file=sys.stderr, flush=True)
    return train, test, {"ignored_rows": n_ignored}


# ------------------------------------------------------------------------------------------ tasks

def load_rna_type(s) -> TaskData:
    path = data_dir() / "rna/nrc_type.csv"
    df = _read_csv(path, "rna-type")
    y, classes = _encode(df["label"].tolist())
    train, test, _ = _file_split(df, path, "rna-type")
    t = TaskData("rna-type", "classification", _normalise(df["sequence"], "rna", path, "rna-type"),
                 y, [Fold("test", train, test)], classes, "linear",
                 {"data": str(path), "split": "the file's train/test split"})
    return _finish(t, s)


def load_rna_crispr(s) -> TaskData:
    path = data_dir() / "rna/crispr_ontarget.csv"
    df = _read_csv(path, "rna-crispr")
    seqs = _normalise(df["sequence"], "rna", path, "rna-crispr")
    train, test = hashed_split(seqs, s.split_seed)
    t = TaskData("rna-crispr", "regression", seqs, df["efficiency"].astype(float).to_numpy(),
                 [Fold("test", train, test)], [], "linear",
                 {"data": str(path), "split": f"hashed by sequence: blake2b(sequence, key="
                  f"split_seed={s.split_seed}) < {TEST_FRACTION} -> test; a guide screened in "
                  "several cell lines is on one side only"})
    return _finish(t, s)


def load_protein_ss3(s) -> TaskData:
    path = data_dir() / "protein/netsurfp_ss3.csv"
    df = _read_csv(path, "protein-ss3")
    _need(df, ["sequence", "ss3", "split"], path, "protein-ss3")
    seqs = _normalise(df["sequence"], "protein", path, "protein-ss3")
    lut = {"H": 0, "E": 1, "C": 2}
    targets = []
    for r, (q, ss) in enumerate(zip(seqs, df["ss3"])):
        if len(ss) != len(q) or set(ss) - set(lut):
            raise EvalError(f"protein-ss3: {path}: row {r + 2}: ss3 must be H/E/C, one per residue")
        targets.append(np.array([lut[c] for c in ss], dtype=np.int64))
    train, test, extra = _file_split(df, path, "protein-ss3")
    t = TaskData("protein-ss3", "token", seqs, targets, [Fold("test", train, test)],
                 ["H", "E", "C"], "mlp",
                 {"data": str(path), "split": "FLIP: fit on train, report test; valid rows unused",
                  **extra})
    return _finish(t, s)


def load_protein_loc(s) -> TaskData:
    path = data_dir() / "protein/deeploc_binary.csv"
    df = _read_csv(path, "protein-loc")
    y, classes = _encode(df["label"].tolist())
    train, test, _ = _file_split(df, path, "protein-loc")
    t = TaskData("protein-loc", "classification",
                 _normalise(df["sequence"], "protein", path, "protein-loc"), y,
                 [Fold("test", train, test)], classes, "mlp",
                 {"data": str(path), "split": "the file's train/test split"})
    return _finish(t, s)


def _structures(df, seqs, path, what, max_len: int):
    keep, pairs = [], []
    for r, (q, st) in enumerate(zip(seqs, df["structure"])):
        if len(st) != len(q):
            raise EvalError(f"{what}: {path}: row {r + 2}: structure and sequence lengths differ")
        if len(q) > max_len:
            continue
        try:
            pairs.append(parse_dot_bracket(st))
        except ValueError as e:
            raise EvalError(f"{what}: {path}: row {r + 2}: {e}") from None
        keep.append(r)
    return np.array(keep, dtype=np.int64), pairs


def load_rna_ss(s) -> TaskData:
    path = data_dir() / "rna/bprna_nf15.csv"
    df = _read_csv(path, "rna-ss")
    seqs = _normalise(df["sequence"], "rna", path, "rna-ss")
    keep, pairs = _structures(df, seqs, path, "rna-ss", s.ss_max_length)
    seqs = [seqs[i] for i in keep]
    train, test = hashed_split(seqs, s.split_seed)
    t = TaskData("rna-ss", "pairs", seqs, pairs, [Fold("test", train, test)], [], "pairwise",
                 {"data": str(path), "split": f"hashed by sequence: blake2b(sequence, key="
                  f"split_seed={s.split_seed}) < {TEST_FRACTION} -> test (the file has no split)",
                  "dropped_longer_than_ss_max_length": int(len(df) - len(keep))})
    return _finish(t, s)


def _archive(s, what):
    path = data_dir() / "rna/archiveII.csv"
    df = _read_csv(path, what)
    seqs = _normalise(df["sequence"], "rna", path, what)
    keep, pairs = _structures(df, seqs, path, what, s.ss_max_length)
    return (path, df.iloc[keep].reset_index(drop=True), [seqs[i] for i in keep], pairs,
            len(df) - len(keep))


def load_rna_ss_archiveii(s) -> TaskData:
    path, df, seqs, pairs, dropped = _archive(s, "rna-ss-archiveii")
    kpath = data_dir() / "rna/archiveII_kfold.csv"
    k = _read_csv(kpath, "rna-ss-archiveii")
    fold_of = dict(zip(k["id"], k["fold"].astype(int)))
    fold = np.array([fold_of.get(i, -1) for i in df["id"]])
    folds = [Fold(f"fold{f}", np.flatnonzero((fold != f) & (fold >= 0)), np.flatnonzero(fold == f))
             for f in sorted(set(fold) - {-1})]
    t = TaskData("rna-ss-archiveii", "pairs", seqs, pairs, folds, [], "pairwise",
                 {"data": f"{path} + {kpath}", "split": "sincFold's random 5 folds; metrics are "
                  "the mean over folds", "dropped_longer_than_ss_max_length": int(dropped),
                  "dropped_without_fold": int((fold < 0).sum())})
    return _finish(t, s)


def load_rna_ss_family(s) -> TaskData:
    path, df, seqs, pairs, dropped = _archive(s, "rna-ss-family")
    fam = df["family"].to_numpy()
    names = sorted(set(fam))
    folds = [Fold(f, np.flatnonzero(fam != f), np.flatnonzero(fam == f)) for f in names]
    t = TaskData("rna-ss-family", "pairs", seqs, pairs, folds, [], "pairwise",
                 {"data": str(path), "split": "leave one family out (families with a sequence of "
                  "at most --ss-max-length); metrics are the mean over families",
                  "families": names, "dropped_longer_than_ss_max_length": int(dropped)})
    return _finish(t, s)


def csv_kind(labels: list[str], requested: str = "auto") -> str:
    """Regression when every label parses as a number and there are more than
    REGRESSION_MIN_DISTINCT distinct values; otherwise classification."""
    if requested != "auto":
        return requested
    try:
        values = np.array([float(v) for v in labels])
    except ValueError:
        return "classification"
    return "regression" if len(np.unique(values)) > REGRESSION_MIN_DISTINCT else "classification"


def load_csv(spec: str, molecule: str, s) -> TaskData:
    path = Path(spec[len("csv:"):]).expanduser()
    if not spec[len("csv:"):]:
        raise EvalError("--tasks csv:PATH needs a path after 'csv:'")
    df = _read_csv(path, spec)
    _need(df, ["sequence", "label"], path, spec)
    if (df["label"].str.strip() == "").any():
        r = int(np.flatnonzero(df["label"].str.strip() == "")[0])
        raise EvalError(f"{spec}: row {r + 2}: empty label")
    seqs = _normalise(df["sequence"], molecule, path, spec)
    labels = df["label"].str.strip().tolist()
    kind = csv_kind(labels, s.csv_kind)
    if kind == "regression":
        try:
            y, classes = np.array([float(v) for v in labels]), []
        except ValueError:
            raise EvalError(f"{spec}: --csv-kind regression needs numeric labels") from None
        rule = (f"regression: every label numeric and more than {REGRESSION_MIN_DISTINCT} "
                "distinct values" if s.csv_kind == "auto" else "regression (--csv-kind)")
    else:
        y, classes = _encode(labels)
        rule = (f"classification: labels not all numeric or at most {REGRESSION_MIN_DISTINCT} "
                "distinct values" if s.csv_kind == "auto" else "classification (--csv-kind)")
        if len(classes) < 2:
            raise EvalError(f"{spec}: label column has a single class {classes[0]!r}")
    info = {"data": str(path), "kind_rule": rule}
    if "split" in df.columns:
        train, test, extra = _file_split(df, path, spec)
        info.update(split="the file's split column (train/test), honoured exactly", **extra)
    else:
        train, test = hashed_split(seqs, s.split_seed)
        info["split"] = (f"no split column: hashed by sequence, blake2b(sequence, key=split_seed="
                         f"{s.split_seed}) < {TEST_FRACTION} -> test")
    t = TaskData(spec, kind, seqs, y, [Fold("test", train, test)], classes, "linear", info)
    return _finish(t, s)


LOADERS = {
    "rna-type": load_rna_type, "rna-ss": load_rna_ss, "rna-ss-archiveii": load_rna_ss_archiveii,
    "rna-ss-family": load_rna_ss_family, "rna-crispr": load_rna_crispr,
    "protein-ss3": load_protein_ss3, "protein-loc": load_protein_loc,
}
MOLECULE_OF = {"rna-type": "rna", "rna-ss": "rna", "rna-ss-archiveii": "rna",
               "rna-ss-family": "rna", "rna-crispr": "rna", "protein-ss3": "protein",
               "protein-loc": "protein"}
