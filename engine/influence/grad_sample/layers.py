"""Per-sample gradient rules for every parameterised layer type in RNA-FM and ESM-C."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register


@register(nn.Linear)
def linear(module: nn.Linear, x: torch.Tensor, d: torch.Tensor, sink) -> None:
    # G_b = d_bᵀ x_b and the bias gradient Σ_t d_bt: the fused kernels never form G for the batch.
    sink.linear(module.weight, module.bias, x, d)


@register(nn.LayerNorm)
def layer_norm(module: nn.LayerNorm, x: torch.Tensor, d: torch.Tensor, sink) -> None:
    # y = x̂ ⊙ γ + β  ⇒  ∂ℓ/∂γ = Σ_t d_t ⊙ x̂_t,  ∂ℓ/∂β = Σ_t d_t   (x̂ recomputed, it is cheap)
    dims = tuple(range(1, x.dim() - len(module.normalized_shape)))  # all but batch and features
    if module.weight is not None and sink.covers(module.weight):
        xhat = F.layer_norm(x.float(), module.normalized_shape, eps=module.eps)
        sink.add(module.weight, (d.float() * xhat).sum(dims))
    if module.bias is not None and sink.covers(module.bias):
        sink.add(module.bias, d.float().sum(dims))


def embedding_grad(weight: torch.Tensor, idx: torch.Tensor, d: torch.Tensor,
                   padding_idx: int | None) -> torch.Tensor:
    """Per-sample gradient of an embedding table: G_b[v] = Σ_{t: idx_bt = v} d_bt, (B, V, E)."""
    from bioprune.engine.runtime.zero3 import full_shape

    B, (V, E) = idx.shape[0], full_shape(weight)   # (ZeRO-3 may have released the data)
    flat = (idx + torch.arange(B, device=idx.device).unsqueeze(1) * V).reshape(-1)
    g = torch.zeros(B * V, E, device=d.device, dtype=torch.float32)
    g.index_add_(0, flat, d.reshape(-1, E).float())
    g = g.view(B, V, E)
    if padding_idx is not None:
        g[:, padding_idx] = 0  # nn.Embedding never updates the padding row
    return g


@register(nn.Embedding, uses_raw_input=True)
def embedding(module: nn.Embedding, idx: torch.Tensor, d: torch.Tensor, sink) -> None:
    if sink.covers(module.weight):
        sink.add(module.weight, embedding_grad(module.weight, idx, d, module.padding_idx))


def _register_fm_rules() -> None:
    try:
        from fm.modules import LearnedPositionalEmbedding, RobertaLMHead
    except ImportError:  # the fm package is optional for protein-only installs
        return

    @register(LearnedPositionalEmbedding, uses_raw_input=True)
    def learned_positions(module, tokens, d, sink) -> None:
        # fm numbers positions from padding_idx + 1 over the non-pad tokens (its forward, redone).
        mask = tokens.ne(module.padding_idx).int()
        positions = (torch.cumsum(mask, dim=1).type_as(mask) * mask).long() + module.padding_idx
        if sink.covers(module.weight):
            # each position occurs once per sample: row positions[b, t] of G_b is d[b, t], so the
            # squared sums need no (B, max_positions, E) per-sample table
            sink.unique_rows(module.weight, positions, d, module.padding_idx)

    @register(RobertaLMHead, input_from_child="layer_norm")
    def roberta_lm_head(module, x, d, sink) -> None:
        # logits = x Wᵀ + b with W tied to the token embedding: the sink sums both uses per sample.
        sink.linear(module.weight, module.bias, x, d)


_register_fm_rules()
