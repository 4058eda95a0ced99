"""The two passes over sequences at the adapted parameters θ̃ (DESIGN steps 2 and 3).

- ``fisher_pass``: F = (1/M) Σ_m g_m ⊙ g_m over D_sub (Eq. 9), the sum all-reduced across ranks.
- ``Scorer``: I(z) = Σ_j g_{z,j}² / (F_j + λ) (Eq. 11) per batch, with the per-sample
  MLM loss ℓ(z, θ̃) and the score mass per parameter group (diagnostics).

ℓ(z) is the expected MLM loss over the masks of a ``MaskPlan`` (K masked copies per sample);
g(z) = ∇θ ℓ(z) sums the copies' gradients before any squaring (see ``grad_sample.collector``).
Fisher and scores must use the same plan. Weights w = 1/(F + λ) come from ``damping``.

Both run the model in eval mode with every parameter frozen; per-sample gradient information
comes from ``grad_sample.SquaredGradCollector``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from bioprune.engine.runtime import distributed
from bioprune.engine.runtime.zero3 import in_lockstep
from bioprune.engine.data.batching import (Batch, MaskPlan, expected_loss, length_sorted_batches,
                                           make_batch)
from bioprune.engine.influence.damping import REFERENCE_DAMPING, influence_weights  # noqa: F401
from bioprune.engine.influence.grad_sample import Mode, SquaredGradCollector

DEFAULT_DAMPING = REFERENCE_DAMPING  # absolute λ of --damping (used with --damping-mode absolute)


def _backward_pass(bundle, batch: Batch, collector: SquaredGradCollector, autocast_dtype=None,
                   scale: float = 1.0):
    tokens = batch.tokens
    with torch.autocast(tokens.device.type, dtype=autocast_dtype,
                        enabled=autocast_dtype is not None):
        logits = bundle.module(tokens)
    loss = expected_loss(logits, batch.labels, batch.copies)
    # Σ_b ℓ_b: samples (and a sample's copies) do not interact, so the output gradient seen by
    # each layer for row b·K + k is exactly that of ℓ_b alone through copy k.
    collector.copies = batch.copies
    # scale 0: a batch that only keeps a ZeRO-3 rank in step (its gradients, hence its
    # contributions, are exactly zero)
    (loss.sum() * scale if scale != 1.0 else loss.sum()).backward()
    collector.flush()
    return loss.detach()


def fisher_pass(bundle, corpus, subset: np.ndarray, params, *, seed: int, max_residues: int,
                micro_batch_size: int, device, backend=None, autocast_dtype=None,
                progress=None, masks: MaskPlan | None = None,
                store=None) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher over ``subset`` (every rank passes its own share of D_sub).

    ``store``: a ``grad_sample.storage`` Fisher store; a ``PartitionedFisher`` (ZeRO-3) returns
    this rank's partitions, summed over the ranks layer by layer during the pass."""
    _prepare(bundle, device)
    partitioned = store is not None and store.partitioned
    # collectives run on the backend's device (NCCL takes CUDA tensors only)
    n_local = torch.tensor([len(subset)], dtype=torch.float64, device=device)
    batches = list(length_sorted_batches(np.asarray(subset), corpus.lengths, micro_batch_size))
    with SquaredGradCollector(bundle, params, Mode.FISHER, backend=backend,
                              fisher_store=store) as col:
        for idx in in_lockstep(batches, device, partitioned):
            scale = 1.0 if idx is not None else 0.0
            idx = idx if idx is not None else _filler(subset)
            batch = make_batch(corpus, idx, bundle, seed, max_residues, masks=masks).to(device)
            _backward_pass(bundle, batch, col, autocast_dtype, scale)
            if progress is not None and scale:
                progress.update(len(idx))
        fisher = col.fisher
    if distributed.world_size() > 1:
        if not partitioned:
            for t in fisher.values():
                dist.all_reduce(t)  # sum over ranks, in a fixed parameter order
        dist.all_reduce(n_local)
    M = float(n_local.item())
    if M <= 0:
        raise ValueError("D_sub is empty: raise --subset-size / --subset-fraction")
    for t in fisher.values():
        t.div_(M)   # in place: never a second copy of a Fisher
    return fisher


def _prepare(bundle, device) -> None:
    from bioprune.engine.runtime.zero3 import any_partitioned

    if not any_partitioned(bundle.module):   # ZeRO-3 places its own partitions
        bundle.module.to(device)
    bundle.module.eval()


def _filler(indices) -> np.ndarray:
    """One sequence for a batch that only keeps ranks in step (its results are dropped)."""
    return np.asarray(indices[:1] if len(indices) else [0], dtype=np.int64)


class Scorer:
    """Scores batches at θ̃ with the weights of ``damping.influence_weights``; reusable across
    batches. ``groups`` ({name: group}) turns on the per-group score mass (``take_group_mass``)."""

    def __init__(self, bundle, params, weights, *, seed: int, max_residues: int, device,
                 backend=None, autocast_dtype=None, masks: MaskPlan | None = None,
                 groups: dict[str, str] | None = None):
        self.bundle, self.seed, self.max_residues = bundle, seed, max_residues
        self.device, self.autocast_dtype, self.masks = device, autocast_dtype, masks
        _prepare(bundle, device)
        self.collector = SquaredGradCollector(bundle, params, Mode.SCORE, weights=weights,
                                              backend=backend, groups=groups)
        self.collector.cross = masks is not None and masks.estimator == "cross"

    def take_group_mass(self) -> dict[str, float]:
        return self.collector.take_group_mass()

    def __enter__(self):
        self.collector.__enter__()
        return self

    def __exit__(self, *exc):
        return self.collector.__exit__(*exc)

    def score_indices(self, corpus, indices) -> dict[str, np.ndarray]:
        batch = make_batch(corpus, indices, self.bundle, self.seed, self.max_residues,
                           masks=self.masks).to(self.device)
        loss = _backward_pass(self.bundle, batch, self.collector, self.autocast_dtype)
        scores = self.collector.take_scores()
        return {
            "index": batch.index.numpy().astype(np.int64),
            "score": scores.cpu().numpy().astype(np.float64),
            "length": batch.length.numpy().astype(np.int32),
            "loss": loss.float().cpu().numpy(),
        }

    def score_chunk(self, corpus, indices: np.ndarray, micro_batch_size: int,
                    progress=None) -> dict[str, np.ndarray]:
        """Score ``indices`` in length-sorted micro-batches; columns in ascending corpus index."""
        ((_, cols, _),) = self.score_chunks(corpus, [(0, indices)], micro_batch_size, progress)
        return cols

    def score_chunks(self, corpus, chunks: list, micro_batch_size: int, progress=None,
                     lockstep: bool = False):
        """Yield ``(key, columns, group mass)`` for each ``(key, indices)`` of ``chunks`` as it
        is finished. ``lockstep`` (ZeRO-3): keep scoring a filler batch until every rank is
        done, so the ranks' forwards and backwards stay in step."""
        work = [(key, b) for key, idx in chunks
                for b in length_sorted_batches(idx, corpus.lengths, micro_batch_size)]
        left = {key: 0 for key, _ in chunks}
        for key, _ in work:
            left[key] += 1
        parts: dict = {key: [] for key, _ in chunks}
        for key, idx in [(k, i) for k, i in chunks if len(i) == 0]:
            yield key, _columns([]), {}
        for item in in_lockstep(work, self.device, lockstep):
            if item is None:
                self.score_indices(corpus, _filler([]))
                self.take_group_mass()
                continue
            key, b = item
            parts[key].append(self.score_indices(corpus, b))
            if progress is not None:
                progress.update(len(b))
            left[key] -= 1
            if left[key] == 0:
                yield key, _columns(parts.pop(key)), self.take_group_mass()


def _columns(results: list[dict]) -> dict[str, np.ndarray]:
    """Batches' columns joined, in ascending corpus index."""
    keys = ("index", "score", "length", "loss")
    if not results:
        return {k: np.zeros(0, dtype=t) for k, t in zip(keys, (np.int64, np.float64, np.int32,
                                                                np.float32))}
    cols = {k: np.concatenate([r[k] for r in results]) for k in keys}
    order = np.argsort(cols["index"], kind="stable")
    return {k: v[order] for k, v in cols.items()}
