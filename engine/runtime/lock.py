"""One writer per run directory: an advisory lock on ``OUT/.bioprune.lock``.

The lock is ``flock`` on an open file: the kernel drops it when the holding process exits,
however it exits (kill -9 included), so a lock left by a dead process is never in the way —
the file stays behind, names the dead pid, and the next run takes it over and says so. The
holder's pid, host, command and start time are written into the file, so a refusal can say who
holds the directory. Taken by rank 0 only (one job = one writer); released at exit or by
:func:`release_all` (``distributed.finalize``).
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from bioprune.engine.runtime.errors import fail

LOCK_FILE = ".bioprune.lock"

_held: dict[str, int] = {}        # absolute directory -> open fd holding the lock


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def acquire(out, what: str = "run") -> str | None:
    """Lock directory ``out`` (created if needed) for this process. Raises UsageError when another
    live process holds it. Returns a note when a stale lock file of a dead process was taken
    over (None otherwise)."""
    import fcntl

    out = Path(out).absolute()
    key = str(out)
    if key in _held:
        return None
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        h = _holder(path)
        who = (f"pid {h.get('pid')} on {h.get('host')}, {h.get('command', '?')}, since "
               f"{h.get('started', '?')}") if h else "another process"
        fail(f"--out {out} is in use by another bioprune {what} ({who}); wait for it to "
             "finish, or pick another --out (two runs must not write one directory)")
    old = _holder(path)
    note = None
    if old.get("pid") and old.get("pid") != os.getpid():
        # the file names a holder but nobody holds the flock: that process died (a clean exit
        # empties the file)
        note = (f"note: took over the stale lock of pid {old.get('pid')} on {old.get('host')} "
                "(that run died without finishing)")
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "command": Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python",
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    _held[key] = fd
    return note


def release(out) -> None:
    import fcntl

    key = str(Path(out).absolute())
    fd = _held.pop(key, None)
    if fd is None:
        return
    try:
        os.ftruncate(fd, 0)          # an empty lock file: nobody holds it, nothing stale
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def release_all() -> None:
    for key in list(_held):
        release(key)


def held(out) -> bool:
    return str(Path(out).absolute()) in _held
