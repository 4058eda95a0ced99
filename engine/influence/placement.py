"""Where the adapted model, its Fisher and the weights 1/(F + λ) live during the passes that do
not train, decided once from the run's DeepSpeed config (:func:`placement_for`):

- :class:`Dense` (ZeRO stages 0-2, one process): the model on this rank's device, the Fisher and
  the weights whole on every rank; rank 0 writes ``fisher.safetensors``; ranks score their chunks
  independently.
- :class:`Zero3`: the model built partitioned with a DeepSpeed engine whose hooks gather layers
  just in time, the Fisher and the weights partitioned exactly like the parameters (no rank holds
  any of them whole); the Fisher is gathered to rank 0 one tensor at a time to be written and each
  rank reads back only its partitions; the ranks run every pass in lockstep, as every forward and
  backward is collective.

The scoring pipeline asks the placement instead of branching on the ZeRO stage.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from bioprune.engine.influence.grad_sample.storage import (DenseFisher, PartitionedFisher,
                                                           PartitionedWeights)
from bioprune.engine.io.atomic import atomic_path
from bioprune.engine.io.safetensors_stream import write_streamed
from bioprune.engine.models import ModelBundle, load_saved_model
from bioprune.engine.runtime import distributed, zero3
from bioprune.engine.runtime.collectives import Comm
from bioprune.engine.runtime.errors import fail

# [(name, parameter)] of the covered parameters, in the model's order
Params = list[tuple[str, torch.nn.Parameter]]
# {parameter name: full shape}, in the covered parameters' order (the file's tensor order)
Shapes = dict[str, tuple[int, ...]]
FisherStore = DenseFisher | PartitionedFisher
# the weights 1/(F + λ) as the scoring pass takes them: whole tensors, or this rank's partitions
WeightStore = dict[str, torch.Tensor] | PartitionedWeights


def placement_for(config: dict) -> Placement:
    """The placement of the run whose DeepSpeed config (``zero3.ds_config``) is ``config``."""
    return Zero3(config) if zero3.stage_of(config) == 3 else Dense(config)


class Dense:
    partitioned = False
    lockstep = False              # the passes never wait for another rank

    def __init__(self, config: dict):
        self.config = config      # the DeepSpeed config of --zero-stage / --offload

    def load(self, model_dir: Path) -> ModelBundle:
        """The saved model of ``model_dir``, placed for the passes."""
        with zero3.building(self.config):
            bundle = load_saved_model(model_dir)
        self._place(bundle)
        return bundle

    def _place(self, bundle: ModelBundle) -> None:
        bundle.module.to(distributed.device())

    def fisher_store(self, params: Params, device) -> FisherStore:
        return DenseFisher(params, device)

    def fisher_tensors(self, store: FisherStore, computed: dict) -> dict[str, torch.Tensor]:
        """What the weights are made from once the Fisher pass returned ``computed``."""
        return computed

    def save_fisher(self, path: Path, shapes: Shapes, store: FisherStore, meta: dict) -> int:
        """Write ``path`` on rank 0; returns its nonzero count there (0 on other ranks)."""
        if distributed.rank() != 0:
            return 0
        fisher = store.tensors
        with atomic_path(path) as tmp:
            save_file({k: v.cpu().contiguous() for k, v in fisher.items()}, str(tmp), metadata=meta)
        return int(sum((f != 0).sum().item() for f in fisher.values()))

    def read_fisher(self, path: Path, params: Params, shapes: Shapes) -> dict[str, torch.Tensor]:
        """The Fisher of ``path`` as :meth:`fisher_tensors` gives it for a fresh pass."""
        _check_fisher_file(path, shapes)
        fisher = load_file(str(path))
        return {nm: fisher[nm] for nm in shapes}

    def damping_allreduce(self):
        """How the damping's statistics are summed over ranks: each rank has the whole Fisher."""
        return None

    def weight_store(self, weights: dict, module: torch.nn.Module) -> WeightStore:
        return weights


class Zero3(Dense):
    partitioned = True
    lockstep = True               # ZeRO-3's gathers are collectives: every rank in step

    def __init__(self, config: dict):
        super().__init__(config)
        self.engine = None        # kept alive: its hooks gather the layers in every pass

    def _place(self, bundle: ModelBundle) -> None:
        self.engine = zero3.inference_engine(bundle.module, self.config)

    def fisher_store(self, params: Params, device) -> FisherStore:
        return PartitionedFisher(params, device)

    def fisher_tensors(self, store: FisherStore, computed: dict) -> dict[str, torch.Tensor]:
        return {nm: store.valid(nm) for nm in store.shapes}

    def save_fisher(self, path: Path, shapes: Shapes, store: FisherStore, meta: dict) -> int:
        """Each tensor is gathered to rank 0 and written before the next is gathered, so no rank
        holds the whole Fisher (collective)."""
        nonzero = 0

        def whole():
            nonlocal nonzero
            for nm, shape in shapes.items():
                t = zero3.gather_to_rank0(store.parts[nm], math.prod(shape), shape)
                if t is not None:
                    nonzero += int((t != 0).sum())
                yield t

        if distributed.rank() == 0:
            write_streamed(path, list(shapes.items()), whole(), metadata=meta)
        else:
            for _ in whole():
                pass
        return nonzero

    def read_fisher(self, path: Path, params: Params, shapes: Shapes) -> dict[str, torch.Tensor]:
        """Each rank reads only its partitions."""
        _check_fisher_file(path, shapes)
        rank, world = distributed.rank(), distributed.world_size()
        return {nm: zero3.read_partition(path, nm, shapes[nm], zero3.partition_of(
            zero3.full_numel(p), rank, world)) for nm, p in params}

    def damping_allreduce(self):
        """Each rank holds partitions: the damping's statistics are summed over the ranks."""
        return Comm().allreduce

    def weight_store(self, weights: dict, module: torch.nn.Module) -> WeightStore:
        """This rank's weight partitions, held as partitioned parameters."""
        shapes = {nm: zero3.full_shape(p) for nm, p in module.named_parameters()}
        return PartitionedWeights.from_parts(weights, shapes, self.config)


# the run's placement: Zero3 is Dense with the model, Fisher and weights partitioned
Placement = Dense | Zero3


def _check_fisher_file(path: Path, shapes: Shapes) -> None:
    with safe_open(str(path), framework="pt") as f:
        missing = [nm for nm in shapes if nm not in f.keys()]
    if missing:
        fail(f"{path} lacks {missing[:3]}: it was made with other --params; delete it")
