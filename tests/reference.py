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
