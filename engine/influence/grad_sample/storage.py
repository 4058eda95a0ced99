"""Where the collector's per-parameter tensors live: the Fisher it accumulates and the weights
1/(F + λ) it scores with. Whole on every rank (``DenseFisher``, ``DenseWeights``: ZeRO stages
0-2, one process), or partitioned over the ranks exactly as ZeRO-3 partitions the parameters
(``PartitionedFisher``, ``PartitionedWeights``), so that under ZeRO-3 no rank ever holds the
whole Fisher or the whole weights:

- Fisher: each layer's Σ_b g_b² of a batch goes into a temporary tensor of that layer's shape,
  which is reduce-scattered into every rank's partition at once and freed — what ZeRO-3 does with
  gradients.
- Weights: each rank keeps its partition as a DeepSpeed partitioned parameter; the collector
  gathers one layer's weights just in time inside the backward and releases them right after —
  what ZeRO-3 does with parameters.

Both kinds are used the same way: ``with store.target(name) as buf`` (add into ``buf``) and
``with store.weights(name) as w``. Under ZeRO-3 these are collectives: every rank runs the same
layers in the same order (the passes keep the ranks in step).
"""
from __future__ import annotations

import contextlib

import torch

from bioprune.engine.runtime import distributed
from bioprune.engine.runtime.zero3 import (PartitionedTensor, Partition, full_numel, full_shape,
                                           partition_of, reduce_scatter_into)


class DenseFisher:
    partitioned = False

    def __init__(self, params, device=None):
        self.tensors = {n: torch.zeros(full_shape(p), dtype=torch.float32,
                                       device=device if device is not None else p.device)
                        for n, p in params}

    @contextlib.contextmanager
    def target(self, name: str):
        yield self.tensors[name]


class PartitionedFisher:
    """``parts[name]``: this rank's partition (length S, zero-padded) of Σ g² over every rank."""
    partitioned = True

    def __init__(self, params, device):
        rank, world = distributed.rank(), distributed.world_size()
        self.device = device
        self.shapes = {n: full_shape(p) for n, p in params}
        self.partition: dict[str, Partition] = {
            n: partition_of(full_numel(p), rank, world) for n, p in params}
        self.parts = {n: torch.zeros(pt.size, dtype=torch.float32, device=device)
                      for n, pt in self.partition.items()}

    @contextlib.contextmanager
    def target(self, name: str):
        buf = torch.zeros(self.shapes[name], dtype=torch.float32, device=self.device)
        yield buf
        reduce_scatter_into(buf, self.parts[name], self.partition[name])

    def valid(self, name: str) -> torch.Tensor:
        """The elements of this rank's partition that lie inside the tensor (no padding)."""
        return self.parts[name][:self.partition[name].valid]


class DenseWeights:
    partitioned = False

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors

    def __contains__(self, name):
        return name in self.tensors

    @contextlib.contextmanager
    def weights(self, name: str):
        yield self.tensors[name]


class PartitionedWeights:
    """w = 1/(F + λ) kept as ZeRO-3 partitioned parameters (one per scored parameter), built from
    this rank's partitions of w (:func:`from_parts`)."""
    partitioned = True

    def __init__(self, tensors: dict[str, PartitionedTensor]):
        self.tensors = tensors

    @classmethod
    def from_parts(cls, parts: dict[str, torch.Tensor], shapes: dict, cfg: dict):
        tensors = {}
        for name, part in parts.items():
            t = PartitionedTensor(shapes[name], cfg)
            t.local.zero_()
            t.local[:part.numel()].copy_(part)
            tensors[name] = t
        return cls(tensors)

    def __contains__(self, name):
        return name in self.tensors

    @contextlib.contextmanager
    def weights(self, name: str):
        with self.tensors[name].full() as w:
            yield w


def as_weight_store(weights) -> DenseWeights | PartitionedWeights:
    if isinstance(weights, (DenseWeights, PartitionedWeights)):
        return weights
    return DenseWeights(weights)
