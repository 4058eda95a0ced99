"""One mmap-threshold policy per process: a selection's NumPy passes borrow theirs and give the
previous one back, so a model run's setting is not lost to whichever module ran last."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]

SCRIPT = """
import os, numpy as np
from bioprune.engine.runtime import malloc
from bioprune.engine.runtime.distributed import mmap_large_allocations
from bioprune.engine.selection.exact import select
assert malloc.current() is None
mmap_large_allocations()                       # a model run on CPU ranks
assert malloc.current() == malloc.MODEL
res = select(np.arange(1000), np.linspace(0, 1, 1000), "cci", 50)
assert len(res.indices) == 50
assert malloc.current() == malloc.MODEL, malloc.current()   # given back after the selection
with malloc.numpy_passes():
    assert malloc.current() == malloc.NUMPY_PASSES
print("ok", malloc.current())
"""


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**base, **env})


def test_selection_restores_the_model_runs_threshold():
    p = _python(SCRIPT)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip() == "ok 1048576"


def test_the_environment_knob_wins():
    p = _python("from bioprune.engine.runtime import malloc\n"
                "malloc.set_mmap_threshold(malloc.MODEL)\n"
                "print(malloc.current())", MALLOC_MMAP_THRESHOLD_="4096")
    assert p.returncode == 0 and p.stdout.strip() == "None"
