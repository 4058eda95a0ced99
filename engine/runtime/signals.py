"""Stopping a job on a signal the way Ctrl-C stops it, on every rank, within seconds.

Two gaps this closes (measured): the ``deepspeed`` launcher forwards signals to its ranks only
for multi-node launches, so ``kill``, ``timeout`` or a scheduler's time limit on it reported the
job dead (exit 143) while both ranks ran on and wrote ``_SUCCESS``; and a rank stopped by
SIGTERM died without releasing its ``--out`` lock or its shared-memory buffer.

* :func:`install` turns SIGTERM and SIGHUP into :class:`Terminated`, a ``KeyboardInterrupt``, so
  they take Ctrl-C's orderly path (the current part is dropped, parts on disk are whole because
  they are renamed into place, the lock is released, one line, exit 128 + signal). A rank blocked
  in a collective whose peer already left cannot take that path, so a timer ends the process
  after ``grace_s`` regardless, releasing the lock and the buffer first.
* :func:`deferred` (training): inside it a signal is only recorded; the loop asks
  :func:`pending` after each optimizer step, checkpoints where it is, then raises
  :class:`Terminated` itself, so a preempted pretraining loses no step.
* :func:`watch_launcher` (ranks started by ``deepspeed``): a thread watches the launcher
  processes above this rank and signals this rank when one of them is gone, so killing the
  launcher stops the job.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

__all__ = ["Terminated", "install", "deferred", "pending", "watch_launcher", "exit_code"]

GRACE_S = 10.0
_STOPPING = threading.Event()
_DEFER = {"depth": 0, "signum": None}   # inside deferred(): the signal waits for the loop


class Terminated(KeyboardInterrupt):
    """A stop asked for by a signal (SIGTERM, SIGHUP)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def exit_code(e: KeyboardInterrupt) -> int:
    """128 + the signal number (SIGTERM: 143), as a shell reports it; Ctrl-C: 130."""
    return 128 + (e.signum if isinstance(e, Terminated) else signal.SIGINT)


def _hard_exit(signum: int, cleanup) -> None:
    time.sleep(GRACE_S)
    try:
        cleanup()
    finally:
        os._exit(128 + signum)


def install(cleanup=lambda: None):
    """Handle SIGTERM / SIGHUP in this (main) thread; returns a function restoring the previous
    handlers. ``cleanup`` runs before the forced exit when the orderly stop takes too long."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        if _DEFER["depth"]:
            _DEFER["signum"] = _DEFER["signum"] or signum
            return
        if not _STOPPING.is_set():
            _STOPPING.set()
            threading.Thread(target=_hard_exit, args=(signum, cleanup), daemon=True).start()
            raise Terminated(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}

    def restore():
        for s, h in old.items():
            signal.signal(s, h)
    return restore


@contextlib.contextmanager
def deferred():
    """Record SIGTERM / SIGHUP instead of stopping at once; the caller polls :func:`pending` at
    points where stopping is safe. A signal still pending when the block ends stops then."""
    _DEFER["depth"] += 1
    try:
        yield
    finally:
        _DEFER["depth"] -= 1
    if not _DEFER["depth"] and _DEFER["signum"]:
        signum, _DEFER["signum"] = _DEFER["signum"], None
        raise Terminated(signum)


def pending() -> int | None:
    """The signal recorded inside :func:`deferred`, or None."""
    return _DEFER["signum"]


def clear_pending() -> None:
    _DEFER["signum"] = None


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of a live process, from /proc; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[1]), fields[19]      # ppid, starttime (pid reuse check)
    except (OSError, IndexError, ValueError):
        return None


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def launcher_ancestors(pid: int | None = None) -> list[tuple[int, str]]:
    """(pid, start time) of the ``deepspeed`` launcher processes above ``pid`` (this process):
    ``deepspeed.launcher.launch`` and the ``deepspeed`` runner above it."""
    out, here = [], _stat(pid or os.getpid())
    while here is not None and here[0] > 1:
        ppid = here[0]
        parent = _stat(ppid)
        if parent is None or "deepspeed" not in _cmdline(ppid):
            break
        out.append((ppid, parent[1]))
        here = parent
    return out


def watch_launcher(poll_s: float = 0.5) -> bool:
    """Start the watcher when this rank runs under the ``deepspeed`` launcher (Linux only);
    returns whether it did."""
    watched = launcher_ancestors() if os.path.isdir("/proc") else []
    if not watched:
        return False

    def watch():
        while not _STOPPING.is_set():
            for pid, start in watched:
                st = _stat(pid)
                if st is None or st[1] != start:
                    os.kill(os.getpid(), signal.SIGTERM)
                    return
            time.sleep(poll_s)

    threading.Thread(target=watch, name="bioprune-launcher-watch", daemon=True).start()
    return True
