"""Argument checks shared by the Triton and PyTorch backends of ``bioprune.kernels``.

The kernels are called once per linear layer per micro-batch deep inside the Fisher and
scoring passes; a silent shape or dtype slip there produces plausible-looking but wrong
scores, so every entry point checks its arguments and names the offending one.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

#: Input dtypes the kernels accept for ``x`` and ``d`` (accumulation is always fp32).
INPUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

BACKENDS = ("triton", "torch")


def check_inputs(op: str, x, d) -> Tuple[int, int, int, int]:
    """Check the activations ``x`` (B, T, I) and output gradients ``d`` (B, T, O).

    Returns ``(B, T, I, O)``.
    """
    for name, t in (("x", x), ("d", d)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 3:
            want = "(B, T, I)" if name == "x" else "(B, T, O)"
            raise ValueError(f"{op}: {name} must be 3-D {want}; got shape {tuple(t.shape)}")
        if t.dtype not in INPUT_DTYPES:
            raise TypeError(
                f"{op}: {name} must be float32, bfloat16 or float16; got {t.dtype}")
    if x.shape[:2] != d.shape[:2]:
        raise ValueError(
            f"{op}: x and d must agree on (B, T); got x {tuple(x.shape)} and d {tuple(d.shape)}")
    if x.dtype != d.dtype and torch.float32 not in (x.dtype, d.dtype):
        raise TypeError(
            f"{op}: x and d mix {x.dtype} and {d.dtype}; cast one of them")
    if x.device != d.device:
        raise ValueError(f"{op}: x and d must be on the same device; got {x.device} and {d.device}")
    B, T, I = x.shape
    O = d.shape[2]
    return int(B), int(T), int(I), int(O)


def check_fp32(op: str, name: str, t, shape: Tuple[int, ...], device: torch.device,
               what: str) -> None:
    """Check an fp32 accumulator / weight tensor of the given shape on ``device``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.float32:
        raise TypeError(f"{op}: {name} must be float32 (fp32 accumulation); got {t.dtype}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(
            f"{op}: {name} must have shape {what} = {tuple(shape)}; got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{op}: {name} is on {t.device} but x and d are on {device}")


def common_dtype(x: torch.Tensor, d: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cast an fp32 operand down when the other one is bf16/fp16.

    This is the autocast case (an fp32 activation feeding a layer whose output gradient is
    bf16): autocast itself rounds x to the low precision before the layer's matmul, so the
    true weight gradient is D_lowᵀ X_low and rounding x here reproduces it.
    """
    if x.dtype == d.dtype:
        return x, d
    low = x.dtype if x.dtype != torch.float32 else d.dtype
    return x.to(low), d.to(low)


def check_all(op: str, x, d, param, param_name: str, bias, bias_name: str):
    """Check everything; returns ``(x, d, B, T, I, O)`` with x and d of one dtype."""
    B, T, I, O = check_inputs(op, x, d)
    check_fp32(op, param_name, param, (O, I), x.device, "(O, I)")
    if bias is not None:
        check_fp32(op, bias_name, bias, (O,), x.device, "(O,)")
    x, d = common_dtype(x, d)
    return x, d, B, T, I, O


def resolve_backend(op: str, backend: Optional[str], device: torch.device) -> str:
    """``None`` means Triton on CUDA tensors and PyTorch everywhere else."""
    if backend is None:
        return "triton" if device.type == "cuda" else "torch"
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS} or None; got {backend!r}")
    return backend
