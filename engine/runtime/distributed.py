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

from bioprune.engine.runtime.launching import free_port


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
            _join_own_job(backend or default_backend())
            deepspeed.init_distributed(dist_backend=backend or default_backend())
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    else:
        share_cpu_cores()
    atexit.register(finalize)
    return dist.get_rank(), dist.get_world_size()


def job_token() -> str:
    """What the ranks of one launch share and another launch does not: ``BIOPRUNE_JOB_TOKEN``
    when set, else Slurm's job and step, else (one node) the launcher process above the ranks
    (its pid and start time). "" when none applies (several nodes without Slurm): no namespace."""
    if os.environ.get("BIOPRUNE_JOB_TOKEN"):
        return os.environ["BIOPRUNE_JOB_TOKEN"]
    if os.environ.get("SLURM_JOB_ID"):
        return f"slurm-{os.environ['SLURM_JOB_ID']}.{os.environ.get('SLURM_STEP_ID', '')}"
    local = os.environ.get("LOCAL_SIZE") or os.environ.get("LOCAL_WORLD_SIZE")
    if local and local == os.environ.get("WORLD_SIZE"):    # every rank on this node
        from bioprune.engine.runtime.signals import launcher_ancestors

        above = launcher_ancestors()
        if above:
            return f"launch-{above[0][0]}-{above[0][1]}"
    return ""


def _join_own_job(backend: str) -> None:
    """Form the process group on a rendezvous store namespaced by :func:`job_token`, and make
    sure the store's server belongs to this job. Two jobs started together on one port: the one
    whose rank 0 cannot bind ends with the port message on rank 0, and its other ranks, which
    reached the other job's server, see another job's token there and end with the same message
    instead of joining that job as duplicate ranks (which killed it, measured)."""
    from datetime import timedelta

    token = job_token()
    if not token:
        return                       # DeepSpeed's own env:// rendezvous
    from bioprune.engine.runtime.errors import UsageError

    rank_, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    timeout = timedelta(minutes=30)
    store = dist.TCPStore(host, port, world, is_master=rank_ == 0, timeout=timeout,
                          wait_for_workers=False)
    if rank_ == 0:
        store.set("bioprune/job", token)
    else:
        store.set_timeout(timedelta(seconds=60))
        owner = store.get("bioprune/job").decode()
        store.set_timeout(timeout)
        if owner != token:
            raise UsageError(f"rendezvous port {port} is already in use by another job; pass a "
                             "free port to the launcher: deepspeed --master_port N ...")
    dist.init_process_group(backend, store=dist.PrefixStore(token, store), rank=rank_,
                            world_size=world, timeout=timeout)


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


def mmap_large_allocations(threshold: int | None = None) -> None:
    """CPU model runs: every allocation of 1 MiB or more is its own mmap, returned to the OS when
    freed (:data:`bioprune.engine.runtime.malloc.MODEL`, where the reason is measured)."""
    from bioprune.engine.runtime import malloc

    malloc.set_mmap_threshold(threshold or malloc.MODEL)


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
            unlink_shm_buffer(me)
    while _SINGLE_ENV:   # the one-process rendezvous set up by single_process_env
        os.environ.pop(_SINGLE_ENV.pop(), None)


def unlink_shm_buffer(me: int) -> None:
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
    * Ctrl-C, SIGTERM, SIGHUP (:mod:`.signals`; also the ``deepspeed`` launcher's death): one
      line saying that rerunning resumes, exit code 130 / 143 / 129;
    * anything else is a bug: its traceback stays, is also saved to ``OUT/bioprune-error.log``
      (when ``out`` exists), and the exit code is 1.
    """
    import sys

    from bioprune.engine.runtime import lock, signals
    from bioprune.engine.runtime.errors import UsageError

    def forced_exit_cleanup():   # a rank stuck in a collective after a signal: free what it holds
        lock.release_all()
        unlink_shm_buffer(rank())

    restore = signals.install(forced_exit_cleanup)
    try:
        init()
        signals.watch_launcher()
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
    except KeyboardInterrupt as e:
        what = (f"stopped by signal {e.signum}" if isinstance(e, signals.Terminated)
                else "interrupted")
        if rank() == 0 or isinstance(e, signals.Terminated):
            print(f"{what}{f' (rank {rank()})' if world_size() > 1 else ''}: rerun the same "
                  "command with the same --out to resume", file=sys.stderr, flush=True)
        if world_size() > 1:   # the peers may be stopping too, or blocked: do not wait for them
            forced_exit_cleanup()
            os._exit(signals.exit_code(e))
        return signals.exit_code(e)
    except Exception:  # noqa: BLE001 - a bug: keep the traceback, say where it is saved
        import traceback

        text = traceback.format_exc()
        sys.stderr.write(text)
        log = _save_log(out, text)
        print(f"bioprune: unexpected error on rank {rank()} (a bug, not a usage mistake): the "
              "traceback is above" + (f" and in {log}" if log else "") + "; please report it",
              file=sys.stderr, flush=True)
        if world_size() > 1:   # the other ranks may wait in a collective; the launcher stops them
            # (also the path of a rank whose peer stopped on a signal first: its collective
            # fails, so it frees the shm buffer here too, or /dev/shm keeps 69 MB per run)
            forced_exit_cleanup()
            os._exit(1)
        return 1
    finally:
        restore()
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
