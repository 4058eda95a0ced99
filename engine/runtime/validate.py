"""Start-up checks of flag values: each raises :class:`UsageError` with one line naming the flag,
the value and what to do. Called by the pipelines before anything expensive (corpus build,
model build, DeepSpeed, adaptation), on every rank; :func:`checked_together` makes a check that
could differ between ranks (a file seen on one node only) stop every rank together."""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from bioprune.engine.runtime.errors import fail


def _flag(name: str) -> str:
    if name == "deepspeed_config":      # DeepSpeed's own flag keeps its underscore
        return "--deepspeed_config"
    return "--" + name.replace("_", "-")


def positive_int(name: str, value, minimum: int = 1) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        fail(f"{_flag(name)} {value}: must be an integer >= {minimum}")


def finite(name: str, value, *, low=None, high=None, low_open=False, high_open=False,
           what: str | None = None) -> None:
    """``value`` finite and inside [low, high] (open ends as asked)."""
    if value is None:
        return
    try:
        v = float(value)
    except (TypeError, ValueError):
        fail(f"{_flag(name)} {value!r}: not a number")
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        bounds.append(f"{'<' if high_open else '<='} {high}")
    need = "a finite number" + (" " + " and ".join(bounds) if bounds else "")
    tail = f" ({what})" if what else ""
    if not math.isfinite(v) or (low is not None and (v <= low if low_open else v < low)) \
            or (high is not None and (v >= high if high_open else v > high)):
        fail(f"{_flag(name)} {value}: must be {need}{tail}")


def regex(name: str, pattern: str | None) -> None:
    if pattern is None:
        return
    try:
        re.compile(pattern)
    except re.error as e:
        fail(f"{_flag(name)} {pattern!r}: not a valid regular expression ({e})")


def readable_file(name: str, path, what: str = "file") -> Path | None:
    if path is None:
        return None
    p = Path(path).expanduser()
    if not p.exists():
        fail(f"{_flag(name)} {path}: no such {what}")
    if p.is_dir():
        fail(f"{_flag(name)} {path}: is a directory, expected a {what}")
    if not os.access(p, os.R_OK):
        fail(f"{_flag(name)} {path}: permission denied")
    return p


def json_file(name: str, path) -> None:
    p = readable_file(name, path, "JSON file")
    if p is None:
        return
    try:
        json.loads(p.read_text())
    except (OSError, ValueError) as e:
        fail(f"{_flag(name)} {path}: not valid JSON ({e})")


def output_dir(name: str, path) -> Path:
    """A directory we may create or write into: not an existing file, parent writable."""
    p = Path(path).expanduser().absolute()
    if p.exists() and not p.is_dir():
        fail(f"{_flag(name)} {path}: is a file, not a directory; pick a directory path")
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        fail(f"{_flag(name)} {path}: {probe} is a file, so the directory cannot be created")
    if not os.access(probe, os.W_OK | os.X_OK):
        fail(f"{_flag(name)} {path}: {probe} is not writable")
    return p


def offload(value: str, zero_stage: int) -> None:
    """--offload moves ZeRO-3 partitions; with another stage there are none to move (its
    choices are checked with the flag, ``runtime.run_flags``)."""
    if value != "none" and zero_stage != 3:
        fail(f"--offload {value} offloads ZeRO-3 partitions: add --zero-stage 3 "
             f"(got --zero-stage {zero_stage})")


def backend(value: str) -> None:
    """--backend triton needs CUDA (or the Triton interpreter, TRITON_INTERPRET=1, the tests')."""
    if value != "triton":
        return
    import torch

    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        fail("--backend triton needs a CUDA GPU and none is visible; use --backend auto (the "
             "PyTorch kernels on the CPU) or torch")


def checked_together(check, *args, **kwargs) -> None:
    """Run ``check`` on every rank; if it fails on any rank, every rank raises that message."""
    from bioprune.engine.runtime.collectives import Comm, together

    together(Comm(), check, *args, what="a settings check", **kwargs)
