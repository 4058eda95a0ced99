"""Starting the project's entry points as processes, in one place: the study, the demo, the
benchmarks and the tests all launch ``launch/*.py`` one-rank (``python``) or several-rank (the
real ``deepspeed`` launcher), so the port choice, the launcher binary and the child environment
are decided here once.

Ports: a multi-rank launch gets a port the kernel reports free at that moment (``free_port``),
never a fixed or pid-derived one: ``29500 + pid % k`` collides across jobs on a shared node, and
a rank that joins another job's rendezvous kills that job too.
"""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

__all__ = ["free_port", "venv_bin", "entry_command", "child_env"]


def free_port() -> int:
    """A TCP port that is free right now (bound to port 0 and released)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def venv_bin(name: str) -> str:
    """``name`` from this interpreter's environment (the venv's ``deepspeed``), else from PATH."""
    cand = Path(sys.executable).parent / name
    return str(cand) if cand.exists() else name


def entry_command(script, args=(), ranks: int = 1, launcher: bool = False) -> list[str]:
    """The command line that runs ``script`` with ``args``: one process with this interpreter,
    or ``deepspeed --num_gpus ranks --master_port <free port>`` (CPU ranks under gloo here);
    ``launcher`` uses the deepspeed launcher for one rank too."""
    args = [str(a) for a in args]
    if int(ranks) > 1 or launcher:
        return [venv_bin("deepspeed"), "--num_gpus", str(int(ranks)), "--master_port",
                str(free_port()), str(script), *args]
    return [sys.executable, str(script), *args]


def child_env(one_thread: bool = False, **extra: str) -> dict:
    """The environment for a launched entry point: the venv's bin first on PATH (deepspeed starts
    its ranks with ``python`` from PATH), unbuffered output; ``one_thread`` when several
    processes share the cores (one OpenMP thread each, or they fight for them)."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
               PYTHONUNBUFFERED="1", **extra)
    if one_thread:
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env
