"""Per-sample gradient rules for Hugging Face masked LMs beyond the generic layers.

ESM-2 (``transformers`` ``EsmForMaskedLM``) is built from Linear, LayerNorm and Embedding modules
(generic rules in :mod:`.layers`); rotary position embeddings have no parameters; the LM head's
decoder is a Linear whose weight is the token embedding (the collector sums the two uses per
sample). What is left is the head's own output bias: ``logits = decoder(x) + bias``.
"""
from __future__ import annotations

import torch

from .registry import register


def _register_esm_rules() -> None:
    try:
        from transformers.models.esm.modeling_esm import EsmLMHead
    except ImportError:  # transformers is optional for the fm / esm families
        return

    @register(EsmLMHead)
    def esm_lm_head_bias(module, x: torch.Tensor, d: torch.Tensor, sink) -> None:
        # d is the gradient of the logits (B, T, V): ∂ℓ/∂bias = Σ_t d_t. The children (dense,
        # layer_norm, decoder) are hooked by their own rules.
        if sink.covers(module.bias):
            sink.add(module.bias, d.float().sum(1))


_register_esm_rules()
