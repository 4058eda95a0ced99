"""Fused Triton kernels for per-sample squared-gradient sums of linear layers.

Math
----
For sample b with inputs X_b ∈ R^{T×I} and output gradients D_b ∈ R^{T×O} (zero at padded
positions) the per-sample weight gradient is G_b = D_bᵀ X_b and the bias gradient is
g_b = Σ_t D_b[t]. The kernels compute

    fisher_accumulate:   F += Σ_b G_b ⊙ G_b          (and F_bias += Σ_b g_b ⊙ g_b)
    weighted_sq_norm:    s_b = Σ_{o,i} W_oi (G_b)_oi²  (+ Σ_o W_bias,o g_bo²)

without ever materialising G for the batch: a program owns one BLOCK_O × BLOCK_I tile of
G_b, builds it in registers with ``tl.dot`` over chunks of BLOCK_T positions (D chunk loaded
transposed as BLOCK_O × BLOCK_T, X chunk as BLOCK_T × BLOCK_I), then squares and reduces it
before moving on. The FLOPs are exactly those of the weight-gradient GEMM
D_allᵀ X_all ((O × B·T) · (B·T × I)); only the epilogue differs, which is why that GEMM is
the roofline the benchmark compares against.

fisher_accumulate
    Grid: one program per (O, I) tile (+ one per O tile for the bias). The program walks all
    samples and their T chunks in one flattened loop, so the software pipeline is not
    restarted per sample; at the last chunk of a sample the tile is squared into a second
    fp32 register accumulator. The Fisher tile is read and written once at the end. Each
    output element belongs to exactly one program and samples are added in batch order:
    no atomics, no extra memory, bitwise reproducible.

weighted_sq_norm
    Grid: (tiles (+ bias tiles), groups of SAMPLES samples). At the last chunk of a sample
    the program loads the weight tile, reduces W ⊙ G² to one number and writes it to
    ``partials[b, tile]``. A second tiny kernel sums each row of partials in a fixed order.
    Extra memory is this (B, P) fp32 buffer, P = number of tiles of the layer (+ bias tiles):
    it depends on the layer shape and tile configuration only, never on B or T, e.g.
    16 × 480 × 4 B = 30 KB for ESM-C's 6144×1152 FFN matrix with 128×128 tiles. A sample's
    partials depend on its own rows of x and d only, so its score is bitwise independent of
    its batch neighbours and of padding length (zero rows add exact zeros).

Precision
---------
bf16/fp16 operands go to ``tl.dot`` as they are (tensor cores) with fp32 accumulation.
fp32 operands use ``input_precision="tf32x3"`` by default on GPUs: three TF32 products that
recover ~fp32 accuracy (relative error ~1e-6) at tensor-core speed, whereas plain TF32 has a
10-bit mantissa (~1e-3 relative) which is too coarse for a Fisher that is later inverted.
Set ``BIOPRUNE_FP32_DOT_PRECISION=ieee`` for exact fp32 FMA (slow) or ``tf32`` (fast, coarse).
Under ``TRITON_INTERPRET=1`` the dot is numpy fp32 matmul whatever the setting, and 16-bit
tiles are upcast to fp32 first (the interpreter's dot would read bf16 as raw integers); the
products of 16-bit values are exact in fp32, as on tensor cores.

Tile configurations
-------------------
Autotuned per (O, I, HAS_BIAS, dtypes) — deliberately *not* per B or T, so that a change of
batch size or padding length cannot switch the tile shape and with it the summation order.
Candidate lists per architecture and operand width (``_CONFIGS``): Hopper (sm_90+: wgmma,
64-wide T chunks, 3–4 stages) and Ampere/Ada (sm_80–89: mma.sync, 32-wide T chunks, 4 stages
of cp.async); fp32 (tf32x3) needs about twice the registers, so its tiles are shallower.
fisher_accumulate keeps two BLOCK_O × BLOCK_I fp32 accumulators (G_b and Σ G_b²), so its
tiles stop at 128×128 with 8 warps; small tiles (64×32) are there for small layers, where
128×128 tiles would leave most SMs idle (640×640 has 25 of them). Every listed configuration
was compiled ahead of time for its target and uses no local memory (no spills); those that
do not fit a particular GPU's shared memory are skipped by the autotuner. Tuning results are
cached on disk (``cache_results=True``), so later processes on the same machine pick the same
configuration and reproduce results bitwise. Under the interpreter one small fixed
configuration is used (autotuning there would only burn time).

Import
------
Whether a ``triton.jit`` function is interpreted is decided when it is *defined*, i.e. when
this module is imported: set ``TRITON_INTERPRET=1`` before importing it to run on the CPU.
``bioprune.kernels`` imports this module lazily, on the first Triton call.
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import torch
import triton
import triton.language as tl

from ._validate import check_all

_INT32_MAX = 2**31 - 1

#: BLOCK sizes used under TRITON_INTERPRET=1 (small so that test shapes are not tile multiples;
#: read at every call, so a test may swap in bigger blocks for big shapes).
INTERPRET_CONFIG = dict(BLOCK_O=32, BLOCK_I=32, BLOCK_T=16)
INTERPRET_SAMPLES = 2


def _fp32_precision() -> str:
    p = os.environ.get("BIOPRUNE_FP32_DOT_PRECISION", "tf32x3").lower()
    if p not in ("tf32x3", "ieee", "tf32"):
        raise ValueError(f"BIOPRUNE_FP32_DOT_PRECISION must be tf32x3, ieee or tf32; got {p!r}")
    return p


# --------------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def _fisher_kernel(
    x_ptr, d_ptr, f_ptr, bf_ptr,
    B, T, I, O,
    sxb, sxt, sxi, sdb, sdt, sdo, sfo, sfi, sbf,
    HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_T: tl.constexpr,
):
    pid = tl.program_id(0)
    n_ti = tl.cdiv(I, BLOCK_I)
    n_tiles = tl.cdiv(O, BLOCK_O) * n_ti
    n_t = tl.cdiv(T, BLOCK_T)
    offs_t = tl.arange(0, BLOCK_T)
    if pid < n_tiles:
        offs_o = (pid // n_ti) * BLOCK_O + tl.arange(0, BLOCK_O)
        offs_i = (pid % n_ti) * BLOCK_I + tl.arange(0, BLOCK_I)
        o_ok = offs_o < O
        i_ok = offs_i < I
        # D is read transposed (BLOCK_O × BLOCK_T) so the tile is D_chunkᵀ @ X_chunk directly.
        d_tile = d_ptr + offs_o[:, None] * sdo + offs_t[None, :] * sdt
        x_tile = x_ptr + offs_t[:, None] * sxt + offs_i[None, :] * sxi
        g = tl.zeros((BLOCK_O, BLOCK_I), dtype=tl.float32)
        sq = tl.zeros((BLOCK_O, BLOCK_I), dtype=tl.float32)
        # One flat loop over (sample, T chunk): the pipeline keeps loading the next sample's
        # chunks while the current one is squared, instead of draining at every sample.
        for k in range(0, B * n_t):
            b = k // n_t
            t0 = (k - b * n_t) * BLOCK_T
            t_ok = (t0 + offs_t) < T
            b64 = b.to(tl.int64)  # B·T·I can exceed 2³¹ elements
            dt = tl.load(d_tile + (b64 * sdb + t0 * sdt),
                         mask=o_ok[:, None] & t_ok[None, :], other=0.0)
            xt = tl.load(x_tile + (b64 * sxb + t0 * sxt),
                         mask=t_ok[:, None] & i_ok[None, :], other=0.0)
            if UPCAST:  # interpreter only: its dot reads bf16 as raw uint16; fp32 is exact
                dt = dt.to(tl.float32)
                xt = xt.to(tl.float32)
            g = tl.dot(dt, xt, g, input_precision=PRECISION)
            if t0 + BLOCK_T >= T:  # G_b tile complete
                sq += g * g
                g = tl.zeros((BLOCK_O, BLOCK_I), dtype=tl.float32)
        f_ptrs = f_ptr + offs_o[:, None] * sfo + offs_i[None, :] * sfi
        f_ok = o_ok[:, None] & i_ok[None, :]
        tl.store(f_ptrs, tl.load(f_ptrs, mask=f_ok, other=0.0) + sq, mask=f_ok)
    else:
        if HAS_BIAS:
            # Bias tiles: g_b = Σ_t D_b[t] is a column sum, no dot needed; these programs only
            # stream D once, so they finish long before the GEMM tiles.
            offs_o = (pid - n_tiles) * BLOCK_O + tl.arange(0, BLOCK_O)
            o_ok = offs_o < O
            d_tile = d_ptr + offs_o[:, None] * sdo + offs_t[None, :] * sdt
            gb = tl.zeros((BLOCK_O,), dtype=tl.float32)
            sqb = tl.zeros((BLOCK_O,), dtype=tl.float32)
            for k in range(0, B * n_t):
                b = k // n_t
                t0 = (k - b * n_t) * BLOCK_T
                t_ok = (t0 + offs_t) < T
                dt = tl.load(d_tile + (b.to(tl.int64) * sdb + t0 * sdt),
                             mask=o_ok[:, None] & t_ok[None, :], other=0.0)
                gb += tl.sum(dt.to(tl.float32), axis=1)
                if t0 + BLOCK_T >= T:
                    sqb += gb * gb
                    gb = tl.zeros((BLOCK_O,), dtype=tl.float32)
            bf_ptrs = bf_ptr + offs_o * sbf
            tl.store(bf_ptrs, tl.load(bf_ptrs, mask=o_ok, other=0.0) + sqb, mask=o_ok)


@triton.jit
def _wsq_kernel(
    x_ptr, d_ptr, w_ptr, bw_ptr, part_ptr,
    B, T, I, O,
    sxb, sxt, sxi, sdb, sdt, sdo, swo, swi, sbw, sp,
    HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_T: tl.constexpr,
    SAMPLES: tl.constexpr,
):
    pid = tl.program_id(0)  # tile; fastest grid axis, so all tiles of a sample group run together
    b_first = tl.program_id(1) * SAMPLES
    n_b = tl.minimum(B - b_first, SAMPLES)
    n_ti = tl.cdiv(I, BLOCK_I)
    n_tiles = tl.cdiv(O, BLOCK_O) * n_ti
    n_t = tl.cdiv(T, BLOCK_T)
    offs_t = tl.arange(0, BLOCK_T)
    if pid < n_tiles:
        offs_o = (pid // n_ti) * BLOCK_O + tl.arange(0, BLOCK_O)
        offs_i = (pid % n_ti) * BLOCK_I + tl.arange(0, BLOCK_I)
        o_ok = offs_o < O
        i_ok = offs_i < I
        d_tile = d_ptr + offs_o[:, None] * sdo + offs_t[None, :] * sdt
        x_tile = x_ptr + offs_t[:, None] * sxt + offs_i[None, :] * sxi
        w_ptrs = w_ptr + offs_o[:, None] * swo + offs_i[None, :] * swi
        w_ok = o_ok[:, None] & i_ok[None, :]
        g = tl.zeros((BLOCK_O, BLOCK_I), dtype=tl.float32)
        for k in range(0, n_b * n_t):
            bl = k // n_t
            t0 = (k - bl * n_t) * BLOCK_T
            b = b_first + bl
            t_ok = (t0 + offs_t) < T
            b64 = b.to(tl.int64)
            dt = tl.load(d_tile + (b64 * sdb + t0 * sdt),
                         mask=o_ok[:, None] & t_ok[None, :], other=0.0)
            xt = tl.load(x_tile + (b64 * sxb + t0 * sxt),
                         mask=t_ok[:, None] & i_ok[None, :], other=0.0)
            if UPCAST:  # interpreter only: its dot reads bf16 as raw uint16; fp32 is exact
                dt = dt.to(tl.float32)
                xt = xt.to(tl.float32)
            g = tl.dot(dt, xt, g, input_precision=PRECISION)
            if t0 + BLOCK_T >= T:
                # The weight tile is re-read per sample (from L2) rather than kept live in
                # registers next to the accumulator.
                w = tl.load(w_ptrs, mask=w_ok, other=0.0)
                tl.store(part_ptr + b * sp + pid, tl.sum(w * g * g))
                g = tl.zeros((BLOCK_O, BLOCK_I), dtype=tl.float32)
    else:
        if HAS_BIAS:
            offs_o = (pid - n_tiles) * BLOCK_O + tl.arange(0, BLOCK_O)
            o_ok = offs_o < O
            d_tile = d_ptr + offs_o[:, None] * sdo + offs_t[None, :] * sdt
            bw = tl.load(bw_ptr + offs_o * sbw, mask=o_ok, other=0.0)
            gb = tl.zeros((BLOCK_O,), dtype=tl.float32)
            for k in range(0, n_b * n_t):
                bl = k // n_t
                t0 = (k - bl * n_t) * BLOCK_T
                b = b_first + bl
                t_ok = (t0 + offs_t) < T
                dt = tl.load(d_tile + (b.to(tl.int64) * sdb + t0 * sdt),
                             mask=o_ok[:, None] & t_ok[None, :], other=0.0)
                gb += tl.sum(dt.to(tl.float32), axis=1)
                if t0 + BLOCK_T >= T:
                    tl.store(part_ptr + b * sp + pid, tl.sum(bw * gb * gb))
                    gb = tl.zeros((BLOCK_O,), dtype=tl.float32)


@triton.jit
def _sum_rows_kernel(part_ptr, out_ptr, P, sp, BLOCK_P: tl.constexpr):
    # One program per sample; the order of the sum depends on P and BLOCK_P only.
    b = tl.program_id(0)
    offs = tl.arange(0, BLOCK_P)
    acc = tl.zeros((BLOCK_P,), dtype=tl.float32)
    for p0 in range(0, P, BLOCK_P):
        acc += tl.load(part_ptr + b * sp + p0 + offs, mask=(p0 + offs) < P, other=0.0)
    tl.store(out_ptr + b, tl.sum(acc))


def _is_interpreted(fn) -> bool:
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover - very old/new triton layouts
        return False
    return isinstance(fn, InterpretedFunction)


#: True when this module was imported with TRITON_INTERPRET=1 (kernels run on the CPU).
INTERPRETED = _is_interpreted(_fisher_kernel)


# --------------------------------------------------------------------------------------------
# autotuning (GPU only)
# --------------------------------------------------------------------------------------------

def _cfg(bo, bi, bt, warps, stages, samples=None):
    kw = dict(BLOCK_O=bo, BLOCK_I=bi, BLOCK_T=bt)
    if samples is not None:
        kw["SAMPLES"] = samples
    return triton.Config(kw, num_warps=warps, num_stages=stages)


# (BLOCK_O, BLOCK_I, BLOCK_T, num_warps, num_stages[, SAMPLES]) per (op, arch, operand width).
# Every entry was compiled ahead of time for its target (sm_90 / sm_80) and uses no local
# memory (no register spills). fp32 operands use tf32x3, whose three products per step need
# about twice the registers, hence the shallower T chunks there.
_CONFIGS = {
    ("fisher", "hopper", "16bit"): [
        _cfg(128, 128, 64, 8, 3), _cfg(128, 128, 64, 8, 4), _cfg(128, 128, 128, 8, 2),
        _cfg(64, 256, 64, 8, 3), _cfg(128, 64, 64, 4, 4), _cfg(64, 128, 64, 4, 4),
        _cfg(64, 64, 64, 4, 4), _cfg(64, 64, 128, 4, 3),
        _cfg(64, 32, 64, 4, 4),  # small layers (640×640: 200 programs) fill more SMs
    ],
    ("fisher", "ampere", "16bit"): [
        _cfg(128, 128, 32, 8, 4), _cfg(128, 128, 64, 8, 3), _cfg(128, 64, 32, 4, 4),
        _cfg(64, 128, 32, 4, 4), _cfg(64, 64, 64, 4, 3), _cfg(64, 64, 32, 4, 4),
        _cfg(64, 32, 32, 4, 4),
    ],
    ("fisher", "hopper", "fp32"): [
        _cfg(128, 128, 16, 8, 4), _cfg(64, 64, 64, 4, 4), _cfg(64, 64, 64, 4, 3),
        _cfg(64, 64, 32, 4, 4),
    ],
    ("fisher", "ampere", "fp32"): [
        _cfg(128, 128, 16, 8, 4), _cfg(64, 64, 32, 4, 4), _cfg(64, 64, 16, 4, 4),
    ],
    ("wsq", "hopper", "16bit"): [
        _cfg(128, 128, 64, 8, 3, 4), _cfg(128, 128, 64, 8, 4, 2), _cfg(128, 128, 64, 8, 3, 1),
        _cfg(128, 128, 128, 8, 2, 4), _cfg(128, 64, 64, 4, 4, 4), _cfg(64, 128, 64, 4, 4, 4),
        _cfg(64, 256, 64, 8, 3, 2), _cfg(64, 64, 64, 4, 4, 2),
    ],
    ("wsq", "ampere", "16bit"): [
        _cfg(128, 128, 32, 8, 4, 2), _cfg(128, 128, 64, 8, 3, 4), _cfg(128, 64, 32, 4, 4, 4),
        _cfg(64, 128, 32, 4, 4, 4), _cfg(64, 64, 32, 4, 4, 2),
    ],
    ("wsq", "hopper", "fp32"): [
        _cfg(128, 128, 32, 8, 3, 4), _cfg(128, 128, 32, 8, 4, 2), _cfg(64, 128, 32, 4, 4, 4),
        _cfg(64, 64, 64, 4, 4, 2), _cfg(64, 64, 32, 4, 4, 2),
    ],
    ("wsq", "ampere", "fp32"): [
        _cfg(128, 128, 16, 8, 4, 2), _cfg(64, 128, 16, 4, 4, 4), _cfg(64, 64, 32, 4, 4, 2),
    ],
}


def _configs(op: str):
    return [c for (o, _, _), cs in _CONFIGS.items() if o == op for c in cs]


def _prune_for(op: str):
    group = {id(c): (arch, width) for (o, arch, width), cs in _CONFIGS.items() if o == op
             for c in cs}

    def prune(configs, named_args, **kwargs):
        x = named_args["x_ptr"]
        arch = "hopper" if torch.cuda.get_device_capability(x.device)[0] >= 9 else "ampere"
        width = "fp32" if x.dtype == torch.float32 else "16bit"
        return [c for c in configs if group.get(id(c)) == (arch, width)]

    return prune


_tuned = {}


def _autotuned(op: str):
    if op not in _tuned:
        kernel = _fisher_kernel if op == "fisher" else _wsq_kernel
        # The fisher kernel accumulates in place and autotuning launches it many times.
        restore = ["f_ptr", "bf_ptr"] if op == "fisher" else None
        _tuned[op] = triton.autotune(
            configs=_configs(op), key=["O", "I", "HAS_BIAS"],
            prune_configs_by={"early_config_prune": _prune_for(op)},
            restore_value=restore, cache_results=True)(kernel)
    return _tuned[op]


# --------------------------------------------------------------------------------------------
# launchers
# --------------------------------------------------------------------------------------------

def _require_runnable(op: str, device: torch.device) -> None:
    if device.type == "cuda" or INTERPRETED:
        return
    raise RuntimeError(
        f"{op}: backend='triton' needs CUDA tensors (got {device}). To run the Triton kernels on "
        "the CPU, set TRITON_INTERPRET=1 in the environment before bioprune.kernels.triton_sq "
        "is first imported; otherwise use backend='torch' (or None for automatic).")


def _max_offset(t: torch.Tensor, dims) -> int:
    return sum((t.shape[k] - 1) * abs(t.stride(k)) for k in dims if t.shape[k] > 0)


def _safe_for_int32(t: torch.Tensor) -> torch.Tensor:
    # Offsets inside one sample are int32 in the kernel (the batch offset is int64); a strided
    # view whose per-sample span exceeds that is copied once, contiguous.
    def span(u):  # + margin for the lanes of the last, partly masked tile
        return _max_offset(u, (1, 2)) + 256 * (abs(u.stride(1)) + abs(u.stride(2)))
    if span(t) > _INT32_MAX:
        t = t.contiguous()
        if span(t) > _INT32_MAX:
            raise ValueError(f"one sample spans {t.shape[1] * t.shape[2]} elements; "
                             "the Triton kernels support at most 2**31 per sample")
    return t


def _check_param_span(op: str, name: str, t: torch.Tensor) -> None:
    if _max_offset(t, range(t.dim())) > _INT32_MAX:
        raise ValueError(f"{op}: {name} spans more than 2**31 elements; not supported by Triton")


# FMA contraction (sq += g*g as one rounding) is both faster and more accurate; asking for it
# explicitly also keeps Triton 3.9 from warning that its default will change.
_GPU_OPTIONS = dict(enable_fp_fusion=True)


def _precision(dtype: torch.dtype) -> str:
    if dtype != torch.float32 or INTERPRETED:
        return "ieee"  # ignored for 16-bit operands; the interpreter computes exact fp32
    return _fp32_precision()


@torch.no_grad()
def fisher_accumulate_triton(x: torch.Tensor, d: torch.Tensor, fisher: torch.Tensor,
                             bias_fisher: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Triton version of ``reference.fisher_accumulate_torch`` (same arguments, in place)."""
    op = "fisher_accumulate"
    x, d, B, T, I, O = check_all(op, x, d, fisher, "fisher", bias_fisher, "bias_fisher")
    _require_runnable(op, x.device)
    if B == 0 or T == 0 or O == 0 or (I == 0 and bias_fisher is None):
        return fisher
    x, d = _safe_for_int32(x), _safe_for_int32(d)
    _check_param_span(op, "fisher", fisher)
    has_bias = bias_fisher is not None

    def grid(meta):
        n_o = triton.cdiv(O, meta["BLOCK_O"])
        return (n_o * triton.cdiv(I, meta["BLOCK_I"]) + (n_o if has_bias else 0),)

    args = (x, d, fisher, bias_fisher, B, T, I, O,
            *x.stride(), *d.stride(), *fisher.stride(),
            bias_fisher.stride(0) if has_bias else 0)
    meta = dict(HAS_BIAS=has_bias, PRECISION=_precision(x.dtype), UPCAST=INTERPRETED)
    if INTERPRETED:
        _fisher_kernel[grid](*args, **meta, **INTERPRET_CONFIG)
    else:
        with torch.cuda.device(x.device):
            _autotuned("fisher")[grid](*args, **meta, **_GPU_OPTIONS)
    return fisher


def _n_parts(O: int, I: int, has_bias: bool, meta) -> int:
    """Partials per sample: one per (O, I) tile plus one per O tile for the bias."""
    n_o = triton.cdiv(O, meta["BLOCK_O"])
    return n_o * triton.cdiv(I, meta["BLOCK_I"]) + (n_o if has_bias else 0)


def _partials_stride(O: int, I: int, has_bias: bool) -> int:
    if INTERPRETED:
        return _n_parts(O, I, has_bias, INTERPRET_CONFIG)
    return _gpu_partials_stride(O, I, has_bias)


@functools.lru_cache(maxsize=None)
def _gpu_partials_stride(O: int, I: int, has_bias: bool) -> int:
    return max(_n_parts(O, I, has_bias, c.kwargs) for c in _configs("wsq"))


@torch.no_grad()
def weighted_sq_norm_triton(x: torch.Tensor, d: torch.Tensor, weight: torch.Tensor,
                            bias_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Triton version of ``reference.weighted_sq_norm_torch``; returns fp32 (B,)."""
    op = "weighted_sq_norm"
    x, d, B, T, I, O = check_all(op, x, d, weight, "weight", bias_weight, "bias_weight")
    _require_runnable(op, x.device)
    if B == 0 or T == 0 or O == 0 or (I == 0 and bias_weight is None):
        return torch.zeros(B, dtype=torch.float32, device=x.device)
    x, d = _safe_for_int32(x), _safe_for_int32(d)
    _check_param_span(op, "weight", weight)
    has_bias = bias_weight is not None
    # Row stride of the partials: room for the smallest tiles any configuration uses, so the
    # buffer can be allocated before the autotuner has chosen one.
    sp = _partials_stride(O, I, has_bias)
    partials = torch.empty((B, sp), dtype=torch.float32, device=x.device)
    out = torch.empty(B, dtype=torch.float32, device=x.device)

    def grid(meta):
        return (_n_parts(O, I, has_bias, meta), triton.cdiv(B, meta["SAMPLES"]))

    args = (x, d, weight, bias_weight, partials, B, T, I, O,
            *x.stride(), *d.stride(), *weight.stride(),
            bias_weight.stride(0) if has_bias else 0, sp)
    meta = dict(HAS_BIAS=has_bias, PRECISION=_precision(x.dtype), UPCAST=INTERPRETED)
    if INTERPRETED:
        _wsq_kernel[grid](*args, **meta, **INTERPRET_CONFIG, SAMPLES=INTERPRET_SAMPLES)
        P = _n_parts(O, I, has_bias, INTERPRET_CONFIG)
        _sum_rows_kernel[(B,)](partials, out, P, sp, BLOCK_P=min(1024, triton.next_power_of_2(P)))
    else:
        with torch.cuda.device(x.device):
            tuned = _autotuned("wsq")
            tuned[grid](*args, **meta, **_GPU_OPTIONS)
            P = _n_parts(O, I, has_bias, tuned.best_config.kwargs)
            _sum_rows_kernel[(B,)](partials, out, P, sp,
                                   BLOCK_P=min(1024, triton.next_power_of_2(P)), **_GPU_OPTIONS)
    return out
