"""The two passes over sequences at the adapted parameters θ̃ (DESIGN steps 2 and 3).

- ``fisher_pass``: F = (1/M) Σ_m g_m ⊙ g_m over D_sub (Eq. 9), the sum all-reduced across ranks.
- ``score_batch``: I(z) = Σ_j g_{z,j}² / (F_j + λ) (Eq. 11) for one batch, with the per-sample
  MLM loss ℓ(z, θ̃).

Both run the model in eval mode with every parameter frozen; per-sample gradient information
comes from ``grad_sample.SquaredGradCollector``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from bioprune.engine.runtime import distributed
from bioprune.engine.data.batching import Batch, length_sorted_batches, make_batch, per_sample_loss
from bioprune.engine.influence.grad_sample import Mode, SquaredGradCollector

DEFAULT_DAMPING = 1e-8


def _backward_pass(bundle, batch: Batch, collector: SquaredGradCollector, autocast_dtype=None):
    tokens = batch.tokens
    with torch.autocast(tokens.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        logits = bundle.module(tokens)
    loss = per_sample_loss(logits, batch.labels)
    # Σ_b ℓ_b: samples do not interact, so the output gradient seen by each layer for sample b
    # is exactly that of ℓ_b alone.
    loss.sum().backward()
    collector.flush()
    return loss.detach()


def fisher_pass(bundle, corpus, subset: np.ndarray, params, *, seed: int, max_residues: int,
                micro_batch_size: int, device, backend=None, autocast_dtype=None,
                progress=None) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher over ``subset`` (every rank passes its own share of D_sub)."""
    bundle.module.to(device).eval()
    # collectives run on the backend's device (NCCL takes CUDA tensors only)
    n_local = torch.tensor([len(subset)], dtype=torch.float64, device=device)
    with SquaredGradCollector(bundle, params, Mode.FISHER, backend=backend) as col:
        for idx in length_sorted_batches(np.asarray(subset), corpus.lengths, micro_batch_size):
            batch = make_batch(corpus, idx, bundle, seed, max_residues).to(device)
            _backward_pass(bundle, batch, col, autocast_dtype)
            if progress is not None:
                progress.update(len(idx))
        fisher = col.fisher
    if distributed.world_size() > 1:
        for t in fisher.values():
            dist.all_reduce(t)  # sum over ranks, in a fixed parameter order
        dist.all_reduce(n_local)
    M = float(n_local.item())
    if M <= 0:
        raise ValueError("D_sub is empty: raise --subset-size / --subset-fraction")
    return {n: t / M for n, t in fisher.items()}


def influence_weights(fisher: dict[str, torch.Tensor], damping: float, device) -> dict[str, torch.Tensor]:
    """w = 1/(F + λ), fp32, per covered parameter."""
    if not damping > 0:
        raise ValueError(f"damping must be > 0 (got {damping})")
    return {n: (1.0 / (f.double() + damping)).float().to(device) for n, f in fisher.items()}


class Scorer:
    """Scores batches at θ̃ with the weights of ``influence_weights``; reusable across batches."""

    def __init__(self, bundle, params, weights, *, seed: int, max_residues: int, device,
                 backend=None, autocast_dtype=None):
        self.bundle, self.seed, self.max_residues = bundle, seed, max_residues
        self.device, self.autocast_dtype = device, autocast_dtype
        bundle.module.to(device).eval()
        self.collector = SquaredGradCollector(bundle, params, Mode.SCORE, weights=weights,
                                              backend=backend)

    def __enter__(self):
        self.collector.__enter__()
        return self

    def __exit__(self, *exc):
        return self.collector.__exit__(*exc)

    def score_indices(self, corpus, indices) -> dict[str, np.ndarray]:
        batch = make_batch(corpus, indices, self.bundle, self.seed, self.max_residues).to(self.device)
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
        cols = {"index": [], "score": [], "length": [], "loss": []}
        for b in length_sorted_batches(indices, corpus.lengths, micro_batch_size):
            r = self.score_indices(corpus, b)
            for k in cols:
                cols[k].append(r[k])
            if progress is not None:
                progress.update(len(b))
        cols = {k: np.concatenate(v) for k, v in cols.items()}
        order = np.argsort(cols["index"], kind="stable")
        return {k: v[order] for k, v in cols.items()}
