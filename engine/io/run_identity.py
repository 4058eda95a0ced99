"""What a run directory is: its identity (the settings and inputs that determine its outputs),
opening it for one writer, and telling a finished run from one to resume.

``RUN/run_config.json`` holds the identity: result-changing settings, the inputs' size and mtime,
the checkpoint's, and for pretraining a SHA-256 of the training indices. :func:`open_run` (every
rank, collectively):

1. locks ``--out`` (rank 0; :mod:`bioprune.engine.runtime.lock`), so two jobs never interleave;
2. with ``overwrite``, clears the earlier run's outputs (the corpus cache is kept: it checks its
   own inputs);
3. refuses a directory holding a run of another identity (the differences listed);
4. writes the identity, after every start-up check has passed, so a refused or mistyped run
   never leaves a config that poisons the next one (and an identity binds only once the run has
   produced something: a run that failed on a bad record leaves nothing that refuses the fix).

:func:`finished` says whether the directory already holds the finished outputs of this identity:
a rerun then reports it and exits 0 instead of starting over.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from bioprune.engine.io import run_config
from bioprune.engine.runtime.collectives import Comm, raise_together
from bioprune.engine.runtime.errors import UsageError, fail

KEEP = (".bioprune.lock", "corpus")     # never removed by --overwrite


def fingerprint(path) -> dict:
    """Size and mtime of a file (or, for a dataset directory, of the files under it)."""
    spec = str(path)
    p = Path(spec.rsplit("::", 1)[0] if "::" in spec and not os.path.exists(spec) else spec)
    try:
        if p.is_dir():
            size, mtime, files = 0, 0, 0
            for root, _dirs, names in os.walk(p):
                for fn in names:
                    st = os.stat(os.path.join(root, fn))
                    size, mtime, files = size + st.st_size, max(mtime, st.st_mtime_ns), files + 1
            return {"path": spec, "size": size, "mtime_ns": mtime, "files": files}
        st = p.stat()
        return {"path": spec, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    except OSError:
        return {"path": spec, "missing": True}


def load_indices(path):
    """The ``--indices`` file: a 1-D integer array of corpus indices (a ``.npy``), or a list of
    record ids (a text file, one id per line; ``#`` lines and blank lines skipped), returned as a
    list of str to be mapped onto a corpus (``data.record_ids.ids_to_indices``). A UsageError
    names any other problem."""
    import numpy as np

    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError as e:
        fail(f"--indices {path}: cannot read ({e}); pass an int64 .npy such as a coreset.npy")
    if not head.startswith(b"\x93NUMPY"):
        return _read_id_list(path, head)
    try:
        idx = np.load(path)
    except (OSError, ValueError) as e:
        fail(f"--indices {path}: cannot read ({e}); pass an int64 .npy such as a coreset.npy")
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
        fail(f"--indices {path}: expected a 1-D integer array, got {idx.dtype} {idx.shape}")
    if idx.size == 0:
        fail(f"--indices {path}: holds no indices (an empty coreset); nothing to train on")
    return idx


def _read_id_list(path, head: bytes) -> list[str]:
    if b"\0" in head:
        fail(f"--indices {path}: neither a NumPy .npy file nor a text list of record ids; pass a "
             "coreset.npy, or one record id per line (coreset.tsv's id column)")
    try:
        text = open(path, encoding="utf-8").read()
    except (OSError, UnicodeDecodeError) as e:
        fail(f"--indices {path}: not a .npy file and not UTF-8 text of record ids ({e})")
    ids = [ln.split("\t")[0].strip() for ln in text.splitlines()]
    ids = [i for i in ids if i and not i.startswith("#")]
    if not ids:
        fail(f"--indices {path}: holds no record ids (an empty coreset); nothing to train on")
    return ids


def indices_digest(path) -> dict:
    """{"path", "count", "sha256"} of an index file, order-independent (sorted int64, or sorted
    ids for an id list)."""
    import numpy as np

    idx = load_indices(path)
    if isinstance(idx, list):
        canon = "\n".join(sorted(idx)).encode()
    else:
        canon = np.sort(idx.astype("<i8")).tobytes()
    return {"path": str(path), "count": int(len(idx)),
            "sha256": hashlib.sha256(canon).hexdigest()}


def identity(settings, keys, *, data=True, checkpoint=True, extra: dict | None = None) -> dict:
    """The settings ``keys`` (as :func:`run_config.result_config`) plus the inputs' fingerprints."""
    config = run_config.result_config(settings, keys)
    if data and getattr(settings, "data", None):
        config["inputs"] = [fingerprint(d) for d in settings.data]
    if checkpoint and getattr(settings, "checkpoint", None):
        config["checkpoint_file"] = fingerprint(settings.checkpoint)
    for k in ("molecule", "on_invalid"):
        if hasattr(settings, k):
            config[k] = getattr(settings, k)
    config.update(extra or {})
    return config


def _differences(out: Path, config: dict) -> list[str]:
    path = out / run_config.FILE
    if not path.exists():
        return []
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return [f"{path} is unreadable"]
    return [f"{k}: {_short(old.get(k))} then, {_short(v)} now" for k, v in config.items()
            if old.get(k) != v]


def _short(v) -> str:
    if isinstance(v, dict) and "sha256" in v:
        return f"{v.get('count')} indices sha256 {v['sha256'][:12]}"
    if isinstance(v, dict) and "size" in v:
        return f"{v.get('path')} ({v['size']} bytes, mtime {v.get('mtime_ns')})"
    if isinstance(v, list) and v and isinstance(v[0], dict):
        return "[" + ", ".join(_short(x) for x in v) + "]"
    return repr(v)


def clear(out: Path, keep=KEEP) -> None:
    """Remove an earlier run's outputs from ``out`` (everything but ``keep``)."""
    for child in Path(out).iterdir():
        if child.name in keep:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


# what a run directory may hold before it has produced anything (a run that failed at start-up,
# e.g. on a bad record, binds nothing: the corrected rerun simply starts)
NOT_RESULTS = {".bioprune.lock", "run_config.json", "manifest.json", "corpus", "rejected.tsv",
               "bioprune-error.log"}


def has_results(out: Path) -> bool:
    return Path(out).is_dir() and any(
        not (c.name in NOT_RESULTS or c.name.startswith(("bioprune-error", ".selection-")))
        for c in Path(out).iterdir())


def refuse_other(out, config: dict, what: str) -> None:
    """UsageError when ``out`` holds results of a run with another identity (read-only)."""
    out = Path(out).expanduser().absolute()
    diff = _differences(out, config) if has_results(out) else []
    if diff:
        fail(f"{out} holds a {what} made with other settings or inputs ({'; '.join(diff)}); "
             "use a new --out, or pass --overwrite to start it afresh")


def open_run(out, config: dict, *, what: str, overwrite: bool = False, keep=KEEP) -> None:
    """Collective: lock ``out``, clear it (``overwrite``) or refuse another identity, write the
    identity. Every rank raises the same UsageError if rank 0 refuses."""
    from bioprune.engine.runtime import distributed, lock

    out = Path(out).expanduser().absolute()
    err, note = None, None
    if distributed.is_main():
        try:
            note = lock.acquire(out, what)
            if overwrite:
                clear(out, keep)
            refuse_other(out, config, what)
            run_config.write_run_config(out, config)
        except UsageError as e:
            err = str(e)
        except OSError as e:
            err = f"--out {out}: cannot write there ({e})"
    raise_together(Comm(), err, UsageError)
    if note:
        print(note, flush=True)


def finished(out, config: dict, marker: str, target: dict | None = None) -> bool:
    """True when ``out`` holds a finished run of this identity (``marker`` exists, the manifest
    says finished, the config matches and the manifest's config agrees on ``target``, e.g. the
    number of epochs)."""
    out = Path(out).expanduser().absolute()
    if not (out / marker).exists() or _differences(out, config) \
            or not (out / run_config.FILE).exists():
        return False
    try:
        m = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    if m.get("status") != "finished":
        return False
    recorded = m.get("config") or {}
    return all(recorded.get(k) == v for k, v in (target or {}).items())
