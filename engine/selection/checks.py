"""Start-up of a selection: flags checked before any score is read; ``--scores`` may name a
scoring run or its ``scores/``; ``--out`` is locked and holds one selection at a time — another
selection's outputs are refused without ``--overwrite``, and a new selection's files replace the
old set as one unit (:func:`staging` + :func:`commit`: ``selection.json`` goes last, so a
directory without it holds no complete selection)."""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from bioprune.engine.io import run_identity
from bioprune.engine.runtime import flags
from bioprune.engine.runtime import validate as v
from bioprune.engine.runtime.collectives import Comm, raise_together
from bioprune.engine.runtime.errors import UsageError, fail
from bioprune.engine.selection.cluster_table import TABLE as CLUSTERS
from bioprune.engine.selection.report import CORESET, FASTA, LENGTH_PLOT, PLOT, REPORT, TABLE

# one selection's outputs, replaced as one unit
FILES = (CORESET, REPORT, PLOT, FASTA, TABLE, LENGTH_PLOT, CLUSTERS)
def resolve_scores(path: str) -> str:
    p = Path(path).expanduser().absolute()
    if not p.exists():
        fail(f"--scores {path}: directory does not exist; pass a scoring run (RUN) or its "
             "RUN/scores")
    if not p.is_dir():
        fail(f"--scores {path}: is a file; pass a scoring run's directory or its scores/")
    inner = p / "scores"
    if inner.is_dir() and not (p / "_SUCCESS").exists() and not any(p.glob("part-*.parquet")):
        return str(inner)          # a run directory: its scores/
    return str(p)


def check_select_settings(s) -> None:
    """--scores found (a run or its scores/), then each field's own check (declared with it,
    :func:`flags.check_fields`)."""
    s.scores = resolve_scores(s.scores)
    flags.check_fields(s)


def begin_selection(s) -> dict:
    """Check everything and refuse an --out that holds another selection (unless --overwrite);
    returns this selection's identity. Nothing is created yet: --out is locked and written only
    when the outputs are (:func:`write_unit`), so a selection that fails leaves no directory."""
    v.checked_together(check_select_settings, s)
    out = Path(s.out).expanduser().absolute()
    scores = Path(s.scores)
    success = scores / "_SUCCESS"
    config = run_identity.identity(s, flags.identity_keys(type(s)), data=False,
                                    checkpoint=False)
    config["scores"] = {"dir": str(scores), "success": success.read_text().strip()
                        if success.is_file() else None}
    err = None
    try:
        if not s.overwrite:
            _refuse_earlier(out, config)
    except UsageError as e:
        err = str(e)
    raise_together(Comm(), err, UsageError)
    return config


def _refuse_earlier(out: Path, config: dict) -> None:
    if out.is_dir() and not (out / "run_config.json").exists():
        old = [f for f in FILES if (out / f).exists()]
        if old:
            fail(f"--out {out} holds an earlier selection ({', '.join(old)}) with no record of "
                 "its settings; pass --overwrite to replace it, or pick another --out")
    run_identity.refuse_other(out, config, "selection")


def write_unit(s, config: dict, write) -> None:
    """Rank 0: lock --out, check again that no other selection landed there meanwhile, let
    ``write(stage)`` write the outputs into a staging directory, and :func:`commit` them."""
    from bioprune.engine.runtime import lock

    out = Path(s.out).expanduser().absolute()
    note = lock.acquire(out, "selection")
    if note:
        print(note, flush=True)
    if s.overwrite:
        run_identity.clear(out, keep=run_identity.KEEP + tuple(FILES))
    else:
        _refuse_earlier(out, config)
    stage = staging(out)
    try:
        write(stage)
        commit(stage, out, config)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def staging(out) -> Path:
    """A fresh directory inside ``out`` for the new outputs (one filesystem: atomic renames)."""
    stage = Path(out) / f".selection-{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    stage.mkdir(parents=True)
    return stage


def commit(stage: Path, out, config: dict | None = None) -> None:
    """Move the staged outputs into ``out`` as one unit: the old selection.json goes first (no
    complete selection while files change), then the old set, then the new files and identity,
    the new selection.json last."""
    from bioprune.engine.io import run_config

    out = Path(out)
    (out / REPORT).unlink(missing_ok=True)
    new = {p.name for p in stage.iterdir()}
    for name in FILES:
        if name not in new:
            (out / name).unlink(missing_ok=True)
    for name in sorted(new - {REPORT}):
        os.replace(stage / name, out / name)
    if config is not None:
        run_config.write_run_config(out, config)
    if REPORT in new:
        os.replace(stage / REPORT, out / REPORT)
    shutil.rmtree(stage, ignore_errors=True)
