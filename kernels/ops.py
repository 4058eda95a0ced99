"""bioprune.kernels.ops: fused per-sample squared-gradient reductions for linear layers.

For a linear layer with per-sample inputs X ∈ R^{B×T×I} and output gradients D ∈ R^{B×T×O}
(zero at padded positions) the per-sample weight gradient is G_b = D_bᵀ X_b ∈ R^{O×I} and
the bias gradient g_b = Σ_t D_b[t] ∈ R^O. The influence pipeline needs two reductions of them:

* ``fisher_accumulate(x, d, fisher, bias_fisher=None)``: in place
  ``fisher += Σ_b G_b ⊙ G_b`` and ``bias_fisher += Σ_b g_b ⊙ g_b`` (diagonal empirical
  Fisher, the sum part of Eq. 9 — the caller divides by M);
* ``weighted_sq_norm(x, d, weight, bias_weight=None) -> s`` with
  ``s_b = Σ_{o,i} weight_oi (G_b)_oi² + Σ_o bias_weight_o g_bo²`` (self-influence, Eq. 11,
  with ``weight = 1/(F+λ)``).

G is never held for the whole batch: that would be B·O·I floats per layer, which is more
than the model. Both have two backends:

* ``"triton"`` (``triton_sq``): fused kernels, tiles of G_b from ``tl.dot`` squared and
  reduced in registers, no atomics, bitwise reproducible; on CUDA tensors, or on the CPU
  under ``TRITON_INTERPRET=1`` (set before the first Triton call imports the kernels).
* ``"torch"`` (``reference``): batched matmul in memory-bounded blocks; the reference for the
  tests and the production path on the CPU.

``backend=None`` picks Triton for CUDA tensors and PyTorch elsewhere. Inputs may be fp32,
bf16 or fp16 and non-contiguous; accumulators, weights and results are fp32. When one of x, d
is fp32 and the other bf16/fp16 (autocast), the fp32 one is rounded to the other's dtype,
which is what autocast feeds the layer's matmul. This package does not import Triton until a
Triton call needs it.
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch

from ._validate import check_all, resolve_backend
from .reference import (
    DEFAULT_MAX_BYTES_CPU,
    DEFAULT_MAX_BYTES_CUDA,
    fisher_accumulate_torch,
    plan_chunks,
    release_workspace,
    weighted_sq_norm_torch,
)

__all__ = [
    "fisher_accumulate",
    "weighted_sq_norm",
    "fisher_accumulate_torch",
    "weighted_sq_norm_torch",
    "triton_available",
    "plan_chunks",
    "release_workspace",
    "DEFAULT_MAX_BYTES_CPU",
    "DEFAULT_MAX_BYTES_CUDA",
]

_warned_fallback = False


def _triton_module(explicit: bool):
    """Import ``triton_sq`` lazily; under auto mode fall back to PyTorch if Triton is missing."""
    global _warned_fallback
    try:
        from . import triton_sq
    except ImportError as e:
        if explicit:
            raise ImportError(f"backend='triton' needs the triton package: {e}") from e
        if not _warned_fallback:
            warnings.warn(f"bioprune.kernels: Triton unavailable ({e}); using the PyTorch path")
            _warned_fallback = True
        return None
    return triton_sq


def triton_available() -> bool:
    """Whether the Triton backend can run here (CUDA present, or interpreter mode)."""
    mod = _triton_module(explicit=False)
    return mod is not None and (torch.cuda.is_available() or mod.INTERPRETED)


def fisher_accumulate(x: torch.Tensor, d: torch.Tensor, fisher: torch.Tensor,
                      bias_fisher: Optional[torch.Tensor] = None,
                      backend: Optional[str] = None,
                      max_bytes: Optional[int] = None) -> torch.Tensor:
    """In place ``fisher += Σ_b (D_bᵀ X_b)²``; with ``bias_fisher`` also
    ``bias_fisher += Σ_b (Σ_t D_b[t])²``.

    Args:
        x: (B, T, I) layer inputs, fp32/bf16/fp16.
        d: (B, T, O) gradients of the loss w.r.t. the layer outputs (same dtype as x, or
            one of them fp32); rows that are zero (padding) contribute nothing.
        fisher: fp32 (O, I) accumulator, updated in place.
        bias_fisher: optional fp32 (O,) accumulator for the bias, updated in place.
        backend: "triton", "torch", or None (Triton on CUDA tensors, PyTorch elsewhere).
        max_bytes: PyTorch backend only: bound on its temporary per-sample-gradient block.

    Returns:
        ``fisher``.
    """
    x, d, B, T, I, O = check_all("fisher_accumulate", x, d, fisher, "fisher",
                           bias_fisher, "bias_fisher")
    chosen = resolve_backend("fisher_accumulate", backend, x.device)
    if chosen == "triton":
        mod = _triton_module(explicit=backend is not None)
        if mod is not None:
            return mod.fisher_accumulate_triton(x, d, fisher, bias_fisher)
    return fisher_accumulate_torch(x, d, fisher, bias_fisher, max_bytes=max_bytes)


def weighted_sq_norm(x: torch.Tensor, d: torch.Tensor, weight: torch.Tensor,
                     bias_weight: Optional[torch.Tensor] = None,
                     backend: Optional[str] = None,
                     max_bytes: Optional[int] = None) -> torch.Tensor:
    """Per-sample ``s_b = Σ_{o,i} weight_oi (D_bᵀ X_b)_oi²`` (+ ``Σ_o bias_weight_o g_bo²``).

    Arguments as for ``fisher_accumulate``, with ``weight`` fp32 (O, I) and ``bias_weight``
    fp32 (O,). Returns an fp32 tensor of shape (B,). A sample's score depends only on its own
    rows of x and d (bitwise so for the Triton backend).
    """
    x, d, B, T, I, O = check_all("weighted_sq_norm", x, d, weight, "weight",
                           bias_weight, "bias_weight")
    chosen = resolve_backend("weighted_sq_norm", backend, x.device)
    if chosen == "triton":
        mod = _triton_module(explicit=backend is not None)
        if mod is not None:
            return mod.weighted_sq_norm_triton(x, d, weight, bias_weight)
    return weighted_sq_norm_torch(x, d, weight, bias_weight, max_bytes=max_bytes)
