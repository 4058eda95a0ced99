"""Independent references for the tests: per-sample gradients with torch.func, one sample at a time.

Each sample is run alone, unpadded, through ``torch.func.grad`` of the functional model, so the
reference shares nothing with the hook machinery under test (no hooks, no padding, no batching).
"""
from __future__ import annotations

import torch
from torch.func import functional_call, grad

from bioprune.engine.data.batching import make_batch, per_sample_loss


def per_sample_grads(bundle, corpus, indices, seed: int, max_residues: int | None = None):
    """{name: (B, *shape)} float64-accumulated per-sample gradients of the trainable params."""
    model = bundle.module.eval()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in model.named_parameters()}

    def loss_fn(trainable, tokens, labels):
        full = dict(params)
        full.update(trainable)
        logits = functional_call(model, full, (tokens,))
        return per_sample_loss(logits, labels)[0]

    out = {n: [] for n in names}
    for i in indices:
        b = make_batch(corpus, [int(i)], bundle, seed, max_residues)
        g = grad(loss_fn)({n: params[n] for n in names}, b.tokens, b.labels)
        for n in names:
            out[n].append(g[n])
    return {n: torch.stack(v) for n, v in out.items()}


def expected_per_sample_grads(bundle, corpus, indices, seed: int, masks, max_residues=None):
    """{name: (B, *shape)} gradients of ℓ(z) = (1/K) Σ_k ℓ_k(z), the expected MLM loss over the
    K masks of ``masks`` (a ``MaskPlan``): each masked copy runs alone through the functional
    model (its own forward: copies never attend to each other), and torch.func differentiates
    the mean of their losses — the definition the collector's summed copies must reproduce."""
    model = bundle.module.eval()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in model.named_parameters()}

    def loss_fn(trainable, copies):
        full = dict(params)
        full.update(trainable)
        losses = [per_sample_loss(functional_call(model, full, (tok[None],)), lab[None])[0]
                  for tok, lab in copies]
        return torch.stack(losses).mean()

    out = {n: [] for n in names}
    for i in indices:
        b = make_batch(corpus, [int(i)], bundle, seed, max_residues, masks=masks)
        copies = list(zip(b.tokens, b.labels))
        g = grad(loss_fn)({n: params[n] for n in names}, copies)
        for n in names:
            out[n].append(g[n])
    return {n: torch.stack(v) for n, v in out.items()}


def per_copy_grads(bundle, corpus, indices, seed: int, masks, max_residues=None):
    """{name: (B, K, *shape)}: the gradient of each masked copy's own loss ℓ_k(z), every copy run
    alone through torch.func (the independent reference of the cross-term estimator)."""
    model = bundle.module.eval()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in model.named_parameters()}

    def loss_fn(trainable, tok, lab):
        full = dict(params)
        full.update(trainable)
        return per_sample_loss(functional_call(model, full, (tok[None],)), lab[None])[0]

    out = {n: [] for n in names}
    for i in indices:
        b = make_batch(corpus, [int(i)], bundle, seed, max_residues, masks=masks)
        gs = [grad(loss_fn)({n: params[n] for n in names}, tok, lab)
              for tok, lab in zip(b.tokens, b.labels)]
        for n in names:
            out[n].append(torch.stack([g[n] for g in gs]))
    return {n: torch.stack(v) for n, v in out.items()}
