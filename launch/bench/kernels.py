"""Benchmark the per-sample squared-gradient kernels of bioprune.kernels.

For each linear-layer shape (O × I) of RNA-FM and ESM-C 600M it times

* ``fisher_accumulate``  (F += Σ_b G_b², G_b = D_bᵀ X_b) and
* ``weighted_sq_norm``   (s_b = Σ W ⊙ G_b²)

and compares them with the roofline anchor: the cuBLAS/MKL GEMM that computes the *summed*
weight gradient of the same shapes, ``(O, B·T) @ (B·T, I)``. Both do 2·B·T·I·O FLOPs; the
fused kernels only differ in their epilogue (square per sample and reduce), so "× GEMM" close
to 1 means the fusion is free. Results are checked against the reference before timing.

On a CUDA machine (``python launch/bench/kernels.py``) it times the Triton kernels, the
GEMM and the PyTorch reference path with ``triton.testing.do_bench`` (median, L2 flushed
between runs) at B = 16, T = 512, bf16. Goal on an H100: kernel ≤ 1.4 × GEMM and ≥ 3 ×
faster than the PyTorch path. The first call per shape autotunes (about a minute in all).

The "config" column is the autotuned tile (BLOCK_O x BLOCK_I x BLOCK_T [/samples per
program], warps, stages). With --dtype fp32 the kernels use tf32x3 while the GEMM anchor uses
PyTorch's default fp32 matmul (no TF32 unless torch.backends.cuda.matmul.allow_tf32 is set).

Without CUDA it times the PyTorch path (the production CPU path) against the same GEMM in
fp32, with smaller defaults (B = 4, T = 128, fp32 and bf16), in a couple of minutes.
"""
from __future__ import annotations

import sys
import argparse
import json
import math
import platform
import statistics
import time

import torch

from bioprune.kernels import fisher_accumulate, weighted_sq_norm

MODELS = {
    # O × I of every distinct linear layer
    "rnafm": [(640, 640), (5120, 640), (640, 5120)],          # attention, FFN up, FFN down
    "esmc600m": [(1152, 1152), (3456, 1152), (6144, 1152), (1152, 3072)],  # out, qkv, up, down
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
OPS = ("fisher", "wsq")
OP_NAMES = {"fisher": "fisher_accumulate", "wsq": "weighted_sq_norm"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="where to run: cuda times the Triton kernels, cpu the PyTorch path "
                        "(default: cuda when available)")
    p.add_argument("--models", default="rnafm,esmc600m",
                   help=f"comma-separated model shape sets from {sorted(MODELS)} "
                        "(default: %(default)s)")
    p.add_argument("--shapes", default=None,
                   help="extra/override shapes as comma-separated OxI pairs, e.g. 640x640,5120x640; "
                        "replaces --models when given")
    p.add_argument("--batch", type=int, default=None,
                   help="samples per call B (default: 16 on CUDA, 4 on CPU)")
    p.add_argument("--seq", type=int, default=None,
                   help="positions per sample T (default: 512 on CUDA, 128 on CPU)")
    p.add_argument("--dtype", default=None,
                   help="comma-separated input dtypes from fp32,bf16,fp16 "
                        "(default: bf16 on CUDA, fp32,bf16 on CPU)")
    p.add_argument("--ops", default="fisher,wsq",
                   help="which ops: fisher (fisher_accumulate), wsq (weighted_sq_norm)")
    p.add_argument("--bias", action="store_true",
                   help="also reduce the bias gradient (bias_fisher / bias_weight)")
    p.add_argument("--no-reference", action="store_true",
                   help="CUDA only: skip timing the PyTorch reference path")
    p.add_argument("--no-check", action="store_true",
                   help="skip the correctness check before timing")
    p.add_argument("--max-bytes", type=int, default=None,
                   help="block bound of the PyTorch path in bytes (default: its own, "
                        "32 MiB on CPU, 1 GiB on CUDA)")
    p.add_argument("--warmup", type=int, default=25,
                   help="CUDA: do_bench warm-up time in ms (default: %(default)s)")
    p.add_argument("--rep", type=int, default=200,
                   help="CUDA: do_bench measuring time in ms (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=7,
                   help="CPU: timed repetitions per measurement (default: %(default)s)")
    p.add_argument("--cpu-stat", choices=("min", "median"), default="min",
                   help="CPU: statistic reported over the repetitions; min is the most robust "
                        "to other processes on a shared machine (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU: torch.set_num_threads (default: PyTorch's choice)")
    p.add_argument("--seed", type=int, default=0, help="RNG seed for the inputs")
    p.add_argument("--json", default=None, metavar="PATH",
                   help="also write the results as JSON to PATH")
    return p.parse_args(argv)


def shapes_from(args):
    if args.shapes:
        out = []
        for item in args.shapes.split(","):
            o, i = item.lower().split("x")
            out.append(("custom", int(o), int(i)))
        return out
    out = []
    for m in args.models.split(","):
        if m not in MODELS:
            raise SystemExit(f"unknown model {m!r}; choose from {sorted(MODELS)}")
        out += [(m, o, i) for o, i in MODELS[m]]
    return out


def make_inputs(B, T, I, O, dtype, device, seed):
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(B, T, I, generator=g).to(device=device, dtype=dtype)
    d = (torch.randn(B, T, O, generator=g) * 0.05).to(device=device, dtype=dtype)
    w = (torch.rand(O, I, generator=g) + 0.5).to(device)
    bw = (torch.rand(O, generator=g) + 0.5).to(device)
    return x, d, w, bw


def rel_err(got, want):
    got, want = got.double(), want.double()
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-300)).item()


# ---------------------------------------------------------------------------- CUDA


def bench_cuda(args, shapes, dtypes, ops):
    import triton
    from triton.testing import do_bench

    from bioprune.kernels import triton_sq

    B, T = args.batch or 16, args.seq or 512
    rows, failed = [], False
    dev = torch.device("cuda")
    print(f"# {torch.cuda.get_device_name(dev)} | torch {torch.__version__} | triton "
          f"{triton.__version__} | B={B} T={T} bias={args.bias}", flush=True)

    def timeit(fn):
        return do_bench(fn, warmup=args.warmup, rep=args.rep, return_mode="median")

    for dname in dtypes:
        dtype = DTYPES[dname]
        for model, O, I in shapes:
            x, d, w, bw = make_inputs(B, T, I, O, dtype, dev, args.seed)
            flops = 2.0 * B * T * I * O
            xf, dft = x.reshape(B * T, I), d.reshape(B * T, O).t()
            gemm_ms = timeit(lambda: torch.matmul(dft, xf))
            for op in ops:
                bf = torch.zeros(O, device=dev) if args.bias else None
                bwt = bw if args.bias else None
                if op == "fisher":
                    fis = torch.zeros(O, I, device=dev)
                    fn = lambda: fisher_accumulate(x, d, fis, bf, backend="triton")  # noqa: E731
                    ref = lambda: fisher_accumulate(x, d, fis, bf, backend="torch",  # noqa: E731
                                                    max_bytes=args.max_bytes)
                else:
                    fn = lambda: weighted_sq_norm(x, d, w, bwt, backend="triton")  # noqa: E731
                    ref = lambda: weighted_sq_norm(x, d, w, bwt, backend="torch",  # noqa: E731
                                                   max_bytes=args.max_bytes)
                err = float("nan")
                if not args.no_check:
                    if op == "fisher":
                        f1, f2 = torch.zeros(O, I, device=dev), torch.zeros(O, I, device=dev)
                        b1 = b2 = None
                        if args.bias:
                            b1, b2 = torch.zeros(O, device=dev), torch.zeros(O, device=dev)
                        fisher_accumulate(x, d, f1, b1, backend="triton")
                        fisher_accumulate(x, d, f2, b2, backend="torch")
                        err = rel_err(f1, f2)
                        if args.bias:
                            err = max(err, rel_err(b1, b2))
                    else:
                        err = rel_err(weighted_sq_norm(x, d, w, bwt, backend="triton"),
                                      weighted_sq_norm(x, d, w, bwt, backend="torch"))
                fn()  # autotune outside the timed region
                torch.cuda.synchronize()
                k_ms = timeit(fn)
                tuned = triton_sq._tuned.get("fisher" if op == "fisher" else "wsq")
                cfg = getattr(tuned, "best_config", None)
                cfg_s = "interpreted" if cfg is None else "{}x{}x{}{} w{} s{}".format(
                    cfg.kwargs["BLOCK_O"], cfg.kwargs["BLOCK_I"], cfg.kwargs["BLOCK_T"],
                    f"/S{cfg.kwargs['SAMPLES']}" if "SAMPLES" in cfg.kwargs else "",
                    cfg.num_warps, cfg.num_stages)
                r_ms = float("nan") if args.no_reference else timeit(ref)
                tol = 1e-3
                ok = args.no_check or err <= tol
                failed |= not ok
                rows.append(dict(device="cuda", model=model, O=O, I=I, B=B, T=T, dtype=dname,
                                 op=OP_NAMES[op], kernel_ms=k_ms, tflops=flops / k_ms / 1e9,
                                 gemm_ms=gemm_ms, x_gemm=k_ms / gemm_ms, reference_ms=r_ms,
                                 speedup_vs_reference=r_ms / k_ms, rel_err=err, ok=ok,
                                 config=cfg_s))
                print_row_cuda(rows[-1], header=len(rows) == 1)
    return rows, failed


def print_row_cuda(r, header):
    if header:
        print(f"{'model':9} {'O x I':>11} {'dtype':5} {'op':18} {'kernel ms':>9} {'TFLOP/s':>8} "
              f"{'GEMM ms':>8} {'x GEMM':>6} {'ref ms':>8} {'vs ref':>7} {'rel err':>8}  config")
    print(f"{r['model']:9} {r['O']:>5}x{r['I']:<5} {r['dtype']:5} {r['op']:18} "
          f"{r['kernel_ms']:9.4f} {r['tflops']:8.1f} {r['gemm_ms']:8.4f} {r['x_gemm']:6.2f} "
          f"{r['reference_ms']:8.3f} {r['speedup_vs_reference']:6.1f}x {r['rel_err']:8.1e}"
          f"{'' if r['ok'] else ' FAIL'}  {r['config']}", flush=True)


# ---------------------------------------------------------------------------- CPU


def cpu_times(fns, repeats, stat):
    """Time several callables round-robin, so a burst of other load hits all of them alike."""
    for fn in fns:
        fn()  # warm-up (first touch of buffers, MKL initialisation)
    ts = [[] for _ in fns]
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            ts[k].append(time.perf_counter() - t)
    pick = min if stat == "min" else statistics.median
    return [pick(t) * 1e3 for t in ts]


def bench_cpu(args, shapes, dtypes, ops):
    if args.threads:
        torch.set_num_threads(args.threads)
    B, T = args.batch or 4, args.seq or 128
    rows, failed = [], False
    print(f"# CPU {platform.processor() or platform.machine()} | {torch.get_num_threads()} "
          f"threads | torch {torch.__version__} | B={B} T={T} bias={args.bias} | "
          f"PyTorch path vs fp32 GEMM, {args.cpu_stat} of {args.repeats}", flush=True)
    for model, O, I in shapes:
        flops = 2.0 * B * T * I * O
        x32, d32, w, bw = make_inputs(B, T, I, O, torch.float32, "cpu", args.seed)
        xf, dft = x32.reshape(B * T, I), d32.reshape(B * T, O).t()
        out = torch.empty(O, I)
        cases, fns = [], [lambda: torch.matmul(dft, xf, out=out)]
        for dname in dtypes:
            x, d = x32.to(DTYPES[dname]), d32.to(DTYPES[dname])
            for op in ops:
                bf = torch.zeros(O) if args.bias else None
                bwt = bw if args.bias else None
                err = float("nan")
                if not args.no_check:  # against float64 per-sample gradients of 2 samples
                    n = min(B, 2)
                    G = torch.einsum("bto,bti->boi", d[:n].double(), x[:n].double())
                    if op == "fisher":
                        f = torch.zeros(O, I)
                        fisher_accumulate(x[:n], d[:n], f, backend="torch",
                                          max_bytes=args.max_bytes)
                        err = rel_err(f, (G * G).sum(0))
                    else:
                        s = weighted_sq_norm(x[:n], d[:n], w, backend="torch",
                                             max_bytes=args.max_bytes)
                        err = rel_err(s, (w.double() * G * G).sum((1, 2)))
                    del G
                if op == "fisher":
                    fis = torch.zeros(O, I)
                    fns.append(lambda x=x, d=d, fis=fis, bf=bf: fisher_accumulate(
                        x, d, fis, bf, backend="torch", max_bytes=args.max_bytes))
                else:
                    fns.append(lambda x=x, d=d, bwt=bwt: weighted_sq_norm(
                        x, d, w, bwt, backend="torch", max_bytes=args.max_bytes))
                cases.append((dname, op, err))
        gemm_ms, *op_ms = cpu_times(fns, args.repeats, args.cpu_stat)
        for (dname, op, err), ms in zip(cases, op_ms):
            ok = args.no_check or err <= 1e-4
            failed |= not ok
            rows.append(dict(device="cpu", model=model, O=O, I=I, B=B, T=T, dtype=dname,
                             op=OP_NAMES[op], torch_ms=ms, gflops=flops / ms / 1e6,
                             gemm_fp32_ms=gemm_ms, x_gemm=ms / gemm_ms, rel_err=err, ok=ok))
            print_row_cpu(rows[-1], header=len(rows) == 1)
    return rows, failed


def print_row_cpu(r, header):
    if header:
        print(f"{'model':9} {'O x I':>11} {'dtype':5} {'op':18} {'torch ms':>9} {'GFLOP/s':>8} "
              f"{'GEMM ms':>8} {'x GEMM':>6} {'rel err':>8}")
    print(f"{r['model']:9} {r['O']:>5}x{r['I']:<5} {r['dtype']:5} {r['op']:18} "
          f"{r['torch_ms']:9.2f} {r['gflops']:8.1f} {r['gemm_fp32_ms']:8.2f} {r['x_gemm']:6.2f} "
          f"{r['rel_err']:8.1e}{'' if r['ok'] else ' FAIL'}", flush=True)


def summarise(rows):
    if not rows:
        return
    key = "x_gemm"
    g = math.exp(statistics.fmean(math.log(r[key]) for r in rows))
    line = f"# geometric mean x GEMM: {g:.2f}"
    if rows[0]["device"] == "cuda":
        sp = [r["speedup_vs_reference"] for r in rows if r["speedup_vs_reference"] == r["speedup_vs_reference"]]
        if sp:
            line += f" | geometric mean speed-up vs PyTorch path: " \
                    f"{math.exp(statistics.fmean(math.log(s) for s in sp)):.1f}x"
    print(line)


def main(argv=None):
    args = parse_args(argv)
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda but CUDA is not available")
    shapes = shapes_from(args)
    ops = [o.strip() for o in args.ops.split(",")]
    for o in ops:
        if o not in OPS:
            raise SystemExit(f"unknown op {o!r}; choose from {OPS}")
    dtypes = [t.strip() for t in (args.dtype or ("bf16" if use_cuda else "fp32,bf16")).split(",")]
    for t in dtypes:
        if t not in DTYPES:
            raise SystemExit(f"unknown dtype {t!r}; choose from {sorted(DTYPES)}")
    if use_cuda:
        rows, failed = bench_cuda(args, shapes, dtypes, ops)
    else:
        rows, failed = bench_cpu(args, shapes, dtypes, ops)
    summarise(rows)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    if failed:
        print("# correctness check FAILED for some rows", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
