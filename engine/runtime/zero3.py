"""ZeRO-3 for the passes that do not train (build, load, Fisher, scores, export): DeepSpeed's own
machinery, never a sharding layer of ours.

- A model is *built partitioned* inside ``deepspeed.zero.Init`` (:func:`building`): every
  parameter is split over the ranks as its module is constructed, so no rank ever holds the whole
  model; :func:`gathered` (``deepspeed.zero.GatheredParameters``) brings a few back for a moment
  (initialising, loading or exporting one module at a time).
- Forward and backward gather each module's parameters just in time and release them after, by
  the hooks of a DeepSpeed engine without an optimizer (:func:`inference_engine`).
- A per-parameter tensor that must live *partitioned like the parameter* (the Fisher, the weights
  1/(F + λ)) uses ZeRO's layout (:func:`partition_of`): rank r holds elements
  [r·S, r·S + S) of the flattened tensor, S = ⌈numel / world⌉, the tail of the last partition
  padded. :class:`PartitionedTensor` stores one as a DeepSpeed partitioned parameter, so
  ``GatheredParameters`` gathers it just in time too.

Every function here is collective under ZeRO-3 (all ranks call it in the same order) and a no-op
or a plain tensor operation when nothing is partitioned.
"""
from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
import importlib
from pathlib import Path

import torch
from torch import nn

OFFLOAD_CHOICES = ("none", "cpu")


def is_partitioned(p) -> bool:
    """A parameter made by ``deepspeed.zero.Init`` (its data lives in ``ds_tensor`` shards)."""
    return hasattr(p, "ds_id")


def any_partitioned(module: nn.Module) -> bool:
    return any(is_partitioned(p) for p in module.parameters())


def full_shape(p) -> torch.Size:
    """The parameter's shape, also while ZeRO-3 has released its data (``p.shape`` is then (0,))."""
    return p.ds_shape if is_partitioned(p) else p.shape


def full_numel(p) -> int:
    return int(p.ds_numel) if is_partitioned(p) else p.numel()


@contextlib.contextmanager
def gathered(params, modifier_rank: int | None = None):
    """The full data of the partitioned ones among ``params`` inside the block (all ranks).
    With ``modifier_rank`` r, what rank r writes is broadcast and re-partitioned on exit."""
    params = [p for p in params if is_partitioned(p)]
    if not params:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank):
        yield


# ---- configuration ---------------------------------------------------------------------------
def default_ds_config(stage: int) -> Path:
    """``ds_configs/<cpu|cuda>_zero<stage>_<fp32|bf16>.json`` of the installed package."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    kind = "bf16" if dev == "cuda" else "fp32"
    name = f"{dev}_zero{stage}_{kind}.json"
    # bioprune.ds_configs is a namespace package (no __init__.py, so it can never shadow an
    # installed distribution); importlib.resources cannot read an editable install's namespace
    # path, so look in its folders directly
    folders = [Path(p) for p in importlib.import_module("bioprune.ds_configs").__path__]
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    found = [str(f) for f in folders if f.is_dir()]
    raise FileNotFoundError(f"no DeepSpeed config {name} in {found}; ZeRO stages are 0-3")


def ds_config(stage: int, path: str | None = None, offload: str = "none") -> dict:
    """The DeepSpeed config of ``--zero-stage`` (``ds_configs/<device>_zero<stage>_*.json``, or
    ``path``), with ``--offload cpu`` turned into ZeRO-Infinity parameter and optimizer offload."""
    path = Path(path) if path else default_ds_config(stage)
    cfg = json.loads(path.read_text())
    cfg["_source"] = str(path)
    if offload not in OFFLOAD_CHOICES:
        raise ValueError(f"--offload must be one of {OFFLOAD_CHOICES} (got {offload!r})")
    if offload != "none":
        zero = cfg.setdefault("zero_optimization", {})
        if int(zero.get("stage", stage)) != 3:
            raise ValueError("--offload cpu offloads ZeRO-3 partitions: use it with --zero-stage 3")
        zero["offload_param"] = {"device": offload}
        zero["offload_optimizer"] = {"device": offload}
    return cfg


def stage_of(cfg: dict) -> int:
    return int(cfg.get("zero_optimization", {}).get("stage", 0))


@contextlib.contextmanager
def building(cfg: dict | None):
    """Construct models partitioned (``deepspeed.zero.Init``) when ``cfg`` is a ZeRO-3 config;
    otherwise a plain block."""
    if cfg is None or stage_of(cfg) != 3:
        yield
        return
    import deepspeed

    from bioprune.engine.runtime import distributed

    distributed.single_process_env()   # zero.Init needs a process group, even for one rank
    distributed.init()
    init_cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    init_cfg.setdefault("train_micro_batch_size_per_gpu", 1)
    with deepspeed.zero.Init(config_dict_or_path=init_cfg):
        yield
    return_freed_memory()


def return_freed_memory() -> None:
    """Hand memory freed by Python back to the operating system (glibc ``malloc_trim``).

    Building under ``zero.Init`` allocates each module whole and frees it once partitioned; glibc
    keeps those pages, so the process looks (and, for the OOM killer, is) as large as the model
    until they are trimmed: 2.7 GB instead of 1.2 GB per rank for ESM-C 600M on 2 ranks."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):   # not glibc: nothing to do
        pass


def inference_engine(module: nn.Module, cfg: dict):
    """A DeepSpeed engine without an optimizer around a partitioned ``module``: its hooks gather
    each submodule's parameters before its forward and before its backward, and release them
    after (DeepSpeed's ZeRO-3 "offload" coordinator, the one ZeRO inference uses). Call the
    module itself; the engine only has to stay alive."""
    import deepspeed

    from bioprune.engine.runtime import distributed

    cfg = {k: v for k, v in cfg.items()
           if not k.startswith("_") and k not in ("optimizer", "scheduler", "gradient_clipping")}
    cfg.setdefault("train_micro_batch_size_per_gpu", 1)
    cfg["gradient_accumulation_steps"] = 1
    cfg.pop("train_batch_size", None)
    zero = cfg.setdefault("zero_optimization", {})
    zero.pop("offload_optimizer", None)
    distributed.single_process_env()
    with distributed.port_errors():
        engine, _, _, _ = deepspeed.initialize(model=module, config=cfg)
    return engine


def destroy_engine(engine) -> None:
    """Free an engine's optimizer state and hooks now, not whenever the garbage collector runs:
    the adapt engine must be gone before the Fisher pass needs the memory."""
    import gc

    destroy = getattr(engine, "destroy", None)
    if destroy is not None:
        destroy()
    optimizer = getattr(engine, "optimizer", None)
    if optimizer is not None and hasattr(optimizer, "state"):
        with contextlib.suppress(Exception):
            optimizer.state.clear()
    del engine
    # DeepSpeed's ZeRO-3 hooks push modules on a global stack and can leave the root module on
    # it; through that module's hooks the whole engine (optimizer state included: 5.75 GB per
    # rank for ESM-C 600M on 2 ranks) would outlive this call. No forward is running here.
    # Its parameter coordinator also memoises "parameters to release" per (coordinator, module)
    # in an unbounded class-level functools.lru_cache, which keeps every module it saw alive.
    with contextlib.suppress(ImportError, AttributeError):
        from deepspeed.runtime.zero import parameter_offload
        from deepspeed.runtime.zero.partitioned_param_coordinator import \
            PartitionedParameterCoordinator as Coordinator

        parameter_offload.FWD_MODULE_STACK.clear()
        fn = vars(Coordinator).get("_PartitionedParameterCoordinator__params_to_release")
        # (the cache sits inside DeepSpeed's nvtx wrapper, in its closure)
        for cell in [*(getattr(fn, "__closure__", None) or ()), None]:
            inner = fn if cell is None else cell.cell_contents
            if hasattr(inner, "cache_clear"):
                inner.cache_clear()
    gc.collect()
    return_freed_memory()


# ---- per-parameter tensors partitioned like the parameters -----------------------------------
@dataclass(frozen=True)
class Partition:
    start: int      # first element of this rank's partition in the flattened tensor
    size: int       # S: elements per partition (the same on every rank)
    valid: int      # elements of this partition inside the tensor (< size only at the tail)


def partition_of(numel: int, rank: int, world: int) -> Partition:
    """ZeRO-3's layout (``partition_parameters._partition_param``): S = ⌈numel / world⌉."""
    size = math.ceil(numel / world)
    start = size * rank
    return Partition(start, size, max(0, min(numel - start, size)))


class _Holder(nn.Module):
    def __init__(self, shape):
        super().__init__()
        self.value = nn.Parameter(torch.empty(shape, dtype=torch.float32), requires_grad=False)


class PartitionedTensor:
    """An fp32 tensor of ``shape`` stored as a ZeRO-3 partitioned parameter: each rank keeps
    its partition (``local``, length S, padded); ``full()`` gathers it for a block."""

    def __init__(self, shape, cfg: dict):
        # built one at a time inside zero.Init: only this tensor is ever whole, and only briefly
        with building(cfg):
            self._holder = _Holder(tuple(shape))
        self.param = self._holder.value

    @property
    def local(self) -> torch.Tensor:
        return self.param.ds_tensor

    @contextlib.contextmanager
    def full(self):
        with gathered([self.param]):
            yield self.param.data


def reduce_scatter_into(full: torch.Tensor, out: torch.Tensor, part: Partition) -> None:
    """``out += this rank's partition of Σ_ranks full`` (``full`` any shape, ``out`` length S).

    NCCL has reduce-scatter; gloo does not, so there it is an all-reduce and a slice (twice the
    traffic, the same sums)."""
    import torch.distributed as dist

    world = dist.get_world_size() if dist.is_initialized() else 1
    flat = full.reshape(-1)
    if world == 1:
        out[:part.valid] += flat[part.start:part.start + part.valid]
        return
    padded = torch.zeros(part.size * world, dtype=flat.dtype, device=flat.device)
    padded[:flat.numel()] = flat
    if dist.get_backend() == "nccl":
        mine = torch.empty(part.size, dtype=flat.dtype, device=flat.device)
        dist.reduce_scatter_tensor(mine, padded)
    else:
        dist.all_reduce(padded)
        mine = padded[part.start:part.start + part.size]
    out += mine


def in_lockstep(items: list, device, lockstep: bool):
    """``items``, then ``None`` until every rank has run out: under ZeRO-3 every forward and
    backward gathers parameters collectively, so all ranks must run the same number of them."""
    import torch.distributed as dist

    from bioprune.engine.runtime import distributed

    most = len(items)
    if lockstep and distributed.world_size() > 1:
        # agreed before the first item: a collective issued while another rank is still inside
        # a forward would be matched against that forward's gathers
        t = torch.tensor([most], dtype=torch.int64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        most = int(t.item())
    yield from items
    for _ in range(most - len(items)):
        yield None


def peak_memory_mb() -> dict:
    """This process's peak resident memory (and peak CUDA allocation) since the last
    :func:`reset_peak_memory`, MiB. Linux's VmHWM; ``ru_maxrss`` (never reset) elsewhere."""
    out = {"rss": _vm_hwm_mb()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def reset_peak_memory() -> None:
    """Start a new peak: each phase's peak is its own, not the largest of the phases before."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")        # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        pass
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _vm_hwm_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def gather_to_rank0(part: torch.Tensor, numel: int, shape) -> torch.Tensor | None:
    """The whole tensor of ``shape`` from every rank's partition (length S each), on rank 0 as
    an fp32 CPU tensor; None on the other ranks. Collective; one tensor is whole at a time."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return part[:numel].float().cpu().reshape(shape)
    if dist.get_rank() == 0:
        parts = [torch.empty_like(part) for _ in range(dist.get_world_size())]
        dist.gather(part, parts, dst=0)
        return torch.cat(parts)[:numel].float().cpu().reshape(shape)
    dist.gather(part, dst=0)
    return None


def read_partition(path, name: str, shape, part: Partition) -> torch.Tensor:
    """This rank's partition (its ``valid`` elements) of tensor ``name`` in a safetensors file,
    reading only the rows that hold it."""
    from safetensors import safe_open

    row = math.prod(shape[1:]) if len(shape) > 1 else 1
    first = part.start // row
    last = -(-(part.start + part.valid) // row)
    with safe_open(str(path), framework="pt") as f:
        block = f.get_slice(name)[first:last].reshape(-1)
    begin = part.start - first * row
    return block[begin:begin + part.valid].float().clone()
