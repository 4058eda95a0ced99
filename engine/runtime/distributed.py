"""Process-group set-up shared by every entry point.

Entry points run under the ``deepspeed`` launcher (which sets RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR), under ``mpirun``/``mpiexec``/``srun --mpi`` (DeepSpeed discovers rank, size and the
master address through mpi4py), or as plain ``python`` (one process, no process group). On CUDA
the backend is NCCL, elsewhere gloo. The group is destroyed at exit: without that, ranks abort
on teardown.
"""
from __future__ import annotations

import atexit
import contextlib
import os

import torch
import torch.distributed as dist


# what MPICH/Hydra, Open MPI and PMIx-based launchers put in every rank's environment
_MPI_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")
_MPI_LOCAL_SIZE_VARS = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE")


def launched_distributed() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def launched_by_mpi() -> bool:
    return any(v in os.environ for v in _MPI_SIZE_VARS)


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def init(backend: str | None = None) -> tuple[int, int]:
    """Join the process group if launched by ``deepspeed``/``torchrun``; return (rank, world)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if not torch.cuda.is_available():
        mmap_large_allocations()
    mpi = not launched_distributed() and launched_by_mpi()
    if not (launched_distributed() or mpi):
        return 0, 1
    import deepspeed

    with port_errors(mpi):
        if mpi:
            # mpi4py (through DeepSpeed's discovery) fills in RANK/WORLD_SIZE/MASTER_ADDR/PORT;
            # DeepSpeed overrides MASTER_PORT with the port given here, so pass the user's, or a
            # free one that rank 0 picked (never a fixed default two jobs would share)
            deepspeed.init_distributed(dist_backend=backend or default_backend(),
                                       auto_mpi_discovery=True, verbose=False,
                                       distributed_port=mpi_master_port())
        else:
            deepspeed.init_distributed(dist_backend=backend or default_backend())
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    else:
        share_cpu_cores()
    atexit.register(finalize)
    return dist.get_rank(), dist.get_world_size()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def mpi_master_port() -> int:
    """MASTER_PORT when set, else a free port picked by rank 0 and broadcast over MPI."""
    if os.environ.get("MASTER_PORT"):
        return int(os.environ["MASTER_PORT"])
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    return int(comm.bcast(free_port() if comm.Get_rank() == 0 else None, root=0))


_SINGLE_ENV: list[str] = []


def single_process_env() -> None:
    """Before DeepSpeed starts a one-process group (plain ``python launch/...``): give it a
    complete env:// rendezvous on a free local port. Without it DeepSpeed falls back to MPI
    discovery with the fixed port 29500, and a second job on the machine dies with EADDRINUSE.
    A MASTER_PORT set by the user is kept."""
    if launched_distributed() or launched_by_mpi() or (dist.is_available()
                                                         and dist.is_initialized()):
        return
    want = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(free_port())}
    for k, v in want.items():
        if k not in os.environ:
            os.environ[k] = v
            _SINGLE_ENV.append(k)


@contextlib.contextmanager
def port_errors(mpi: bool = False):
    """Turn "address already in use" from the rendezvous into one UsageError line saying which
    port is taken and how to pick another."""
    from bioprune.engine.runtime.errors import UsageError

    try:
        yield
    except Exception as e:  # torch raises DistNetworkError / RuntimeError
        text = str(e)
        if "EADDRINUSE" not in text and "ddress already in use" not in text:
            raise
        port = os.environ.get("MASTER_PORT", "29500")
        if mpi or launched_by_mpi():
            how = "set MASTER_PORT to a free port (mpiexec -env MASTER_PORT N, or export it)"
        elif _SINGLE_ENV or os.environ.get("WORLD_SIZE") == "1":
            how = "set MASTER_PORT to a free port, or just rerun"
        else:
            how = "pass a free port to the launcher: deepspeed --master_port N ..."
        raise UsageError(f"rendezvous port {port} is already in use (another job on this "
                         f"machine?); {how}") from None


def mmap_large_allocations(threshold: int = 1 << 20) -> None:
    """CPU runs: serve every allocation of ``threshold`` bytes or more by mmap, so that freeing
    it returns the memory to the operating system at once.

    glibc raises its mmap threshold (up to 32 MB) after large frees, and from then on puts
    blocks such as a layer's gathered ZeRO-3 parameters, its gradients and optimizer
    temporaries on the heap, which it keeps: ESM-C 600M adaptation on 2 ranks grew past 10 GB
    per rank and was OOM-killed; with a fixed 1 MB threshold its first step peaks at 7.7 GB
    (2.3 GB is the Adam state). Same as MALLOC_MMAP_THRESHOLD_=1048576 in the environment, which
    wins when set. Selection's chunked NumPy passes want the opposite (a 64 MB threshold, see
    ``collectives.tune_malloc``) and set it themselves when they start."""
    import ctypes

    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, threshold)   # M_MMAP_THRESHOLD
    except (OSError, AttributeError):   # not glibc
        pass


def share_cpu_cores() -> None:
    """CPU ranks on one machine split its cores: several ranks each running a full-width
    OpenMP pool oversubscribe the cores, and spinning threads then run ~10x slower."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    local = next((int(os.environ[v]) for v in ("LOCAL_WORLD_SIZE", *_MPI_LOCAL_SIZE_VARS)
                  if v in os.environ), int(os.environ.get("WORLD_SIZE", "1")))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(max(1, (cores or 1) // max(local, 1)))


def finalize() -> None:
    if dist.is_available() and dist.is_initialized():
        me = dist.get_rank()
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()
            _unlink_shm_buffer(me)
    while _SINGLE_ENV:   # the one-process rendezvous set up by single_process_env
        os.environ.pop(_SINGLE_ENV.pop(), None)


def _unlink_shm_buffer(me: int) -> None:
    """DeepSpeed's CPU all-reduce (its shm comm op) creates a 69 MB shared-memory buffer per rank
    and never removes it: /dev/shm fills up run after run (13 GB seen on a 24 GB machine). Every
    rank opened every buffer at start-up, so at exit each rank can unlink its own."""
    name = (f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
            f"{os.environ.get('MASTER_PORT', '')}_{me}")
    with contextlib.suppress(OSError):
        os.unlink(os.path.join("/dev/shm", name))


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def run_distributed(fn, *args, out=None) -> int:
    """Join the process group (if launched by deepspeed / MPI), run ``fn(*args)``, always leave
    the group cleanly. The top-level handler of every launcher:

    * a :class:`UsageError` (a flag, a file, a run directory; CorpusError / ScoresError /
      SelectionError are ones too) becomes one line ``error: ...`` on stderr and exit code 2;
    * Ctrl-C: one line saying that rerunning resumes, exit code 130;
    * anything else is a bug: its traceback stays, is also saved to ``OUT/bioprune-error.log``
      (when ``out`` exists), and the exit code is 1.
    """
    import sys

    from bioprune.engine.runtime import lock
    from bioprune.engine.runtime.errors import UsageError

    try:
        init()
        return fn(*args)
    except UsageError as e:
        # Engine errors are collective by design (agreed, or deterministic on every rank): rank 0
        # reports. One raised on a single rank says so (``local = True``): it reports, and leaves
        # without the closing barrier the other ranks may never reach.
        local = getattr(e, "local", False) and world_size() > 1
        if rank() == 0 or local:
            print(f"error: {f'(rank {rank()}) ' if local and rank() else ''}{e}",
                  file=sys.stderr, flush=True)
        if local:
            lock.release_all()
            os._exit(2)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command with the same --out to resume",
              file=sys.stderr, flush=True)
        return 130
    except Exception:  # noqa: BLE001 - a bug: keep the traceback, say where it is saved
        import traceback

        text = traceback.format_exc()
        sys.stderr.write(text)
        log = _save_log(out, text)
        print(f"bioprune: unexpected error on rank {rank()} (a bug, not a usage mistake): the "
              "traceback is above" + (f" and in {log}" if log else "") + "; please report it",
              file=sys.stderr, flush=True)
        if world_size() > 1:   # the other ranks may wait in a collective; the launcher stops them
            lock.release_all()
            os._exit(1)
        return 1
    finally:
        lock.release_all()
        finalize()


def _save_log(out, text: str):
    from pathlib import Path

    if out is None or not Path(out).is_dir():
        return None
    name = "bioprune-error.log" if world_size() == 1 else f"bioprune-error-rank{rank()}.log"
    path = Path(out).absolute() / name
    try:
        path.write_text(text)
    except OSError:
        return None
    return path
