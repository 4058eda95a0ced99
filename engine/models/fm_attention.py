"""fm's self-attention through ``F.scaled_dot_product_attention``, projections kept as modules.

fm's ``MultiheadAttention`` has two paths. Its fast one (``F.multi_head_attention_forward``)
takes the q/k/v/out weights as tensors and so bypasses the projection modules, whose hooks
compute per-sample gradients (``influence.grad_sample``). Its explicit one keeps the modules but
materialises the B·H·L·L attention matrix with ``bmm``, a ``masked_fill`` and a softmax, and
then also averages it over heads for a return value the encoder throws away; on the CPU that is
about two thirds of a tiny RNA-FM's forward and backward at RNA lengths.

``SdpaMultiheadAttention`` is fm's class with one method replaced: the same projections, as
modules, then the fused attention kernel, then ``out_proj``. It computes the same function as
the explicit path (equal up to float rounding; ``tests/models/test_fm_attention.py`` compares
outputs and every parameter's gradient), so hooks, weights, state-dict keys and checkpoints are
untouched. Calls it does not cover (attention weights wanted, incremental decoding, bias_k/v,
zero attention, an additive mask) go to fm's own forward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from fm.multihead_attention import MultiheadAttention


class SdpaMultiheadAttention(MultiheadAttention):
    """fm's MultiheadAttention; self-attention without weights runs through SDPA."""

    def forward(self, query, key, value, key_padding_mask=None, incremental_state=None,
                need_weights=True, static_kv=False, attn_mask=None, before_softmax=False,
                need_head_weights=False):
        if (need_head_weights or before_softmax or incremental_state is not None or static_kv
                or attn_mask is not None or self.bias_k is not None or self.add_zero_attn
                or key is not query or value is not query):
            return super().forward(query, key, value, key_padding_mask, incremental_state,
                                   need_weights, static_kv, attn_mask, before_softmax,
                                   need_head_weights)
        # fm's encoder asks for need_weights=True and discards the head-averaged weights it gets:
        # not computing them is the point, so the second return value is None.
        length, batch, width = query.shape
        heads, head_dim = self.num_heads, self.head_dim

        def split(x):   # (L, B, E) -> (B, H, L, D)
            return x.view(length, batch, heads, head_dim).permute(1, 2, 0, 3)

        # fm scales q before the product (q *= scaling); doing the same, with SDPA's own scale
        # at 1, keeps the rounding of the two paths close.
        q = split(self.q_proj(query) * self.scaling)
        k, v = split(self.k_proj(query)), split(self.v_proj(query))
        keep = None
        if key_padding_mask is not None and key_padding_mask.dim() != 0:
            keep = ~key_padding_mask.to(torch.bool)[:, None, None, :]   # True = attend
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=keep, dropout_p=self.dropout if self.training else 0.0, scale=1.0)
        out = out.permute(2, 0, 1, 3).reshape(length, batch, width)
        return self.out_proj(out), None


def _switch(module: torch.nn.Module, old: type, new: type) -> int:
    n = 0
    for m in module.modules():
        if type(m) is old:
            m.__class__ = new
            # the calls SDPA hands back to fm must take fm's explicit path, which calls the
            # projection modules, not F.multi_head_attention_forward, which does not
            m.enable_torch_version = False
            n += 1
    return n


def use_sdpa(module: torch.nn.Module) -> int:
    """Switch every fm ``MultiheadAttention`` under ``module`` to ``SdpaMultiheadAttention`` in
    place (same parameters and buffers); the number switched."""
    return _switch(module, MultiheadAttention, SdpaMultiheadAttention)


def use_fm_explicit(module: torch.nn.Module) -> int:
    """The inverse of ``use_sdpa``: fm's explicit path (the B·H·L·L matrix), for comparisons."""
    return _switch(module, SdpaMultiheadAttention, MultiheadAttention)
