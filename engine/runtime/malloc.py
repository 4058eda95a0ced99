"""The glibc allocator's mmap threshold: one setting per process, decided here.

Two kinds of work want opposite settings, so each asks for its own and the last request is
recorded (``current()``), never silently overwritten by a module-level side effect:

- ``MODEL`` (1 MiB) for model runs on CPU ranks: every block of 1 MiB or more is its own mmap and
  goes back to the OS when freed. glibc otherwise raises its threshold (up to 32 MB) after large
  frees and keeps a layer's gathered ZeRO-3 parameters, gradients and optimizer temporaries on the
  heap: ESM-C 600M adaptation on 2 ranks grew past 10 GB per rank and was OOM-killed; with 1 MiB
  its first step peaks at 7.7 GB (2.3 GB of it Adam state).
- ``NUMPY_PASSES`` (64 MiB, trim at 256 MiB) for selection's chunked NumPy passes: each chunk's
  temporaries stay on the heap instead of being fresh mmaps whose pages fault in on first touch
  (5-10x slower passes); the data arrays themselves are still mapped. ``numpy_passes()`` sets it
  for the duration of a selection and restores the previous setting afterwards.

``MALLOC_MMAP_THRESHOLD_`` in the environment (glibc's own knob) wins over both. Not glibc: no-op.
"""
from __future__ import annotations

import contextlib
import os
import sys

__all__ = ["MODEL", "NUMPY_PASSES", "set_mmap_threshold", "current", "numpy_passes"]

MODEL = 1 << 20
NUMPY_PASSES = 64 << 20
_TRIM = {MODEL: None, NUMPY_PASSES: 256 << 20}
_GLIBC_DEFAULT = 128 << 10       # glibc's initial threshold (and trim threshold)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_current: int | None = None      # None: glibc's own (dynamic) threshold, never set here


def _mallopt(param: int, value: int) -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(param, int(value))
    except (OSError, AttributeError):   # not glibc
        pass


def set_mmap_threshold(nbytes: int) -> int | None:
    """Serve allocations of ``nbytes`` or more by mmap (process-wide); returns the previous
    setting (None: glibc's default). Does nothing when the environment sets glibc's knob."""
    global _current
    previous = _current
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or not sys.platform.startswith("linux"):
        return previous
    _mallopt(_M_MMAP_THRESHOLD, nbytes)
    _mallopt(_M_TRIM_THRESHOLD, _TRIM.get(nbytes) or _GLIBC_DEFAULT)
    _current = int(nbytes)
    return previous


def current() -> int | None:
    """The threshold last set through this module (None: never set)."""
    return _current


@contextlib.contextmanager
def numpy_passes():
    """``NUMPY_PASSES`` for the block, then the previous setting again (glibc's default, fixed,
    when there was none: its dynamic mode cannot be switched back on)."""
    previous = set_mmap_threshold(NUMPY_PASSES)
    try:
        yield
    finally:
        if previous != NUMPY_PASSES:
            set_mmap_threshold(previous if previous is not None else _GLIBC_DEFAULT)
