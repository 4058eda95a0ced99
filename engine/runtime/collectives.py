"""Collectives on NumPy arrays over the default torch.distributed process group (gloo on the CPU,
NCCL on GPUs), or none (world = 1, no communication), and the one way a rank-local error becomes
everyone's: :func:`together` runs a step and fails it on every rank if it failed on one;
:func:`raise_together` does the same for an error message a rank has already computed.

Chunked passes (:func:`chunks`) run over CHUNK elements at a time; the selection keeps their
temporaries on the heap (:func:`bioprune.engine.runtime.malloc.numpy_passes`).
"""
from __future__ import annotations

import numpy as np

CHUNK = 1 << 18          # elements per chunk of an elementwise pass (fits the CPU caches)

def chunks(n: int, size: int = CHUNK):
    for a in range(0, n, size):
        yield a, min(n, a + size)



class Comm:
    """Collectives on NumPy data over the default process group (or none: world = 1)."""

    def __init__(self):
        import torch
        import torch.distributed as dist

        self._torch = torch
        self._dist = dist
        if dist.is_available() and dist.is_initialized():
            self.rank = dist.get_rank()
            self.world = dist.get_world_size()
            backend = dist.get_backend()
            self.device = (torch.device("cuda", torch.cuda.current_device())
                           if backend == "nccl" else torch.device("cpu"))
        else:
            self.rank, self.world = 0, 1
            self.device = torch.device("cpu")
        self.rounds = 0          # all-reduce calls (for the benchmark's projection)
        self.bytes = 0           # bytes all-reduced
        self.a2a_calls = 0       # all-to-all calls (the index check)
        self.a2a_bytes = 0       # bytes sent by all-to-all

    # -- all-reduce
    def allreduce(self, arr: np.ndarray, op: str = "sum") -> np.ndarray:
        arr = np.ascontiguousarray(arr)
        self.rounds += 1
        self.bytes += arr.nbytes
        if self.world == 1:
            return arr.copy()
        torch, dist = self._torch, self._dist
        t = torch.from_numpy(arr.copy())
        if self.device.type != "cpu":
            t = t.to(self.device)
        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN,
               "bor": dist.ReduceOp.BOR}
        dist.all_reduce(t, op=ops[op])
        return t.cpu().numpy()

    def sum_int(self, x: int) -> int:
        return int(self.allreduce(np.array([x], dtype=np.int64))[0])

    def max_float(self, x: float) -> float:
        return float(self.allreduce(np.array([x], dtype=np.float64), "max")[0])

    def min_float(self, x: float) -> float:
        return float(self.allreduce(np.array([x], dtype=np.float64), "min")[0])

    def any(self, flag: bool) -> bool:
        return bool(self.allreduce(np.array([1 if flag else 0], dtype=np.int64), "max")[0])

    # -- small objects
    def allgather_object(self, obj) -> list:
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        self._dist.all_gather_object(out, obj)
        return out

    # -- the selected indices (variable length) to rank 0, by point-to-point messages
    def gather_to_root(self, arr: np.ndarray) -> list[np.ndarray] | None:
        arr = np.ascontiguousarray(arr, dtype=np.int64)
        if self.world == 1:
            return [arr]
        counts = np.zeros(self.world, dtype=np.int64)
        counts[self.rank] = arr.size
        counts = self.allreduce(counts)
        torch, dist = self._torch, self._dist
        if self.rank == 0:
            parts = [arr]
            for src in range(1, self.world):
                buf = torch.empty(int(counts[src]), dtype=torch.int64, device=self.device)
                if counts[src]:
                    dist.recv(buf, src=src)
                parts.append(buf.cpu().numpy())
            return parts
        if arr.size:
            dist.send(torch.from_numpy(arr).to(self.device), dst=0)
        return None


def agree(comm: Comm, error_local: str | None) -> str | None:
    """Make a (possibly rank-local) error collective: every rank gets the first rank's message."""
    if not comm.any(error_local is not None):
        return None
    msgs = comm.allgather_object(error_local)
    return next(m for m in msgs if m is not None)



def together(comm: Comm, fn, *args, what: str = "a collective step", **kwargs):
    """Run ``fn(*args, **kwargs)`` on this rank and return its result; if it raised on any rank,
    every rank raises the lowest failing rank's exception — a usage error (UsageError and its
    kinds: CorpusError, ScoresError, …) as itself, anything else as a RuntimeError naming the
    rank — so all ranks leave together instead of some waiting in the next collective. The
    failing rank raises its own exception, traceback included."""
    err, out = None, None
    try:
        out = fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - handed to every rank
        err = e
    if not comm.any(err is not None):
        return out
    errs = comm.allgather_object(_portable(err))
    first = next(r for r, e in enumerate(errs) if e is not None)
    if first == comm.rank:
        raise err
    from bioprune.engine.runtime.errors import UsageError

    if isinstance(errs[first], UsageError):
        raise errs[first]
    raise RuntimeError(f"{what} failed on rank {first}: {errs[first]!r}")


def _portable(e: BaseException | None) -> BaseException | None:
    """``e`` if it survives pickling (to travel to the other ranks), else a RuntimeError."""
    if e is None:
        return None
    import pickle

    try:
        return pickle.loads(pickle.dumps(e))
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(e).__name__}: {e}")


def raise_together(comm: Comm, error_local: str | None, exc_type=RuntimeError) -> None:
    """Collective: if any rank has an error message, every rank raises ``exc_type`` with the first
    rank's message (so all ranks stop together instead of some hanging in the next collective)."""
    err = agree(comm, error_local)
    if err:
        raise exc_type(err)
