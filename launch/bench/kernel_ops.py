"""Benchmark the per-sample squared-gradient kernels of bioprune.kernels against cuBLAS GEMM.

For each distinct linear-layer shape (O × I) of ESM-C 600M, ESM-C 300M and RNA-FM (read off the
models themselves, built on the meta device) it times

* ``fisher_accumulate``  (F += Σ_b G_b², G_b = D_bᵀ X_b) and
* ``weighted_sq_norm``   (s_b = Σ W ⊙ G_b²)

against two GEMMs of exactly the same FLOPs, 2·B·T·O·I (``gemm_flops``), in the same dtype:

* ``matmul``: the summed weight gradient of a training step, ``(O, B·T) @ (B·T, I)``;
* ``bmm``:    the per-sample gradients themselves, ``(B, O, T) @ (B, T, I)`` → B × O × I.

"% GEMM" is the kernel's throughput as a percentage of the faster of the two (GEMM time ÷
kernel time × 100); the fused kernels only differ from them in their epilogue (square per sample
and reduce), so 100% means the fusion is free. Target on CUDA: ≥ 70% (``targets.py``), marked
per shape and for each model as a whole (the shapes weighted by how many layers have them).
Results are checked against the reference before timing.

On a CUDA machine (``python launch/bench/kernel_ops.py``; part of ``make bench-gpu``) it times the
Triton kernels, the two GEMMs and the PyTorch reference path with ``triton.testing.do_bench``
(median, L2 flushed between runs) at B = 16, T = 512, bf16 (cuBLAS bf16 GEMMs accumulate in
fp32, as the kernels do). The first call per shape autotunes (untimed; Triton caches the
choice on disk). Under the default mask cover the engine feeds the kernels 7 masked copies per
sample end to end along T (T = 7 × tokens per sequence): ``--seq 3584`` measures that.

The "config" column is the autotuned tile (BLOCK_O x BLOCK_I x BLOCK_T [/samples per
program], warps, stages). With --dtype fp32 the kernels use tf32x3 while the GEMM anchors use
PyTorch's default fp32 matmul (no TF32 unless torch.backends.cuda.matmul.allow_tf32 is set).

Without CUDA it times the PyTorch path (the production CPU path) against the same GEMMs in
fp32, with smaller defaults (B = 4, T = 128, fp32 and bf16, RNA-FM and ESM-C 600M shapes), in a
couple of minutes; no target is marked there. ``--device cuda`` without CUDA exits with code 2.
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

from bioprune.kernels.ops import fisher_accumulate, weighted_sq_norm
from bioprune.launch.bench.targets import KERNEL_PCT_OF_GEMM_MIN, check, mark, print_targets

#: the models whose layer shapes are measured by default (model:size of engine.models)
DEFAULT_MODELS = {"cuda": "esmc:600m,esmc:300m,rnafm:base", "cpu": "rnafm:base,esmc:600m"}
ALIASES = {"rnafm": "rnafm:base", "esmc600m": "esmc:600m", "esmc300m": "esmc:300m"}
NO_CUDA = 2  # exit code of --device cuda without CUDA
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
OPS = ("fisher", "wsq")
OP_NAMES = {"fisher": "fisher_accumulate", "wsq": "weighted_sq_norm"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="where to run: cuda times the Triton kernels, cpu the PyTorch path "
                        "(default: cuda when available)")
    p.add_argument("--models", default=None,
                   help="comma-separated model:size of bioprune.engine.models whose linear-layer "
                        f"shapes to time (default: CUDA {DEFAULT_MODELS['cuda']}; "
                        f"CPU {DEFAULT_MODELS['cpu']})")
    p.add_argument("--shapes", default=None,
                   help="extra/override shapes as comma-separated OxI pairs, "
                        "e.g. 640x640,5120x640; replaces --models when given")
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


def gemm_flops(B: int, T: int, O: int, I: int) -> float:
    """FLOPs of the per-sample weight gradients G_b = D_bᵀ X_b of a batch, b = 1..B: each of
    the B·O·I outputs is a length-T dot product (T multiplies + T adds) — 2·B·T·O·I, the same as
    the summed gradient (O × B·T) @ (B·T × I) of a training step."""
    return 2.0 * B * T * O * I


def linear_shapes(spec: str) -> list[tuple[int, int, int]]:
    """(O, I, number of layers) of every distinct nn.Linear shape whose weight the engine
    covers (trainable parameters), read off the model built on the meta device (no memory)."""
    from bioprune.engine.models import build_model, trainable_parameters

    name, _, size = ALIASES.get(spec, spec).partition(":")
    with torch.device("meta"):
        module = build_model(name, size or "tiny").module
    covered = {id(p) for _, p in trainable_parameters(module)}
    count: dict[tuple[int, int], int] = {}
    for mod in module.modules():
        if isinstance(mod, torch.nn.Linear) and id(mod.weight) in covered:
            O, I = mod.weight.shape
            count[(O, I)] = count.get((O, I), 0) + 1
    return [(o, i, n) for (o, i), n in count.items()]


def shapes_from(args):
    """(model, O, I, layers) to measure."""
    if args.shapes:
        out = []
        for item in args.shapes.split(","):
            o, i = item.lower().split("x")
            out.append(("custom", int(o), int(i), 1))
        return out
    out = []
    for m in args.models.split(","):
        spec = ALIASES.get(m.strip(), m.strip())
        try:
            out += [(spec, o, i, n) for o, i, n in linear_shapes(spec)]
        except (ValueError, KeyError) as e:
            raise SystemExit(f"unknown model {m!r} (give model:size, e.g. esmc:600m): {e}")
    return out


def gemm_anchors(x, d, out_mm=None, out_bmm=None):
    """The two cuBLAS/MKL GEMMs of gemm_flops(B, T, O, I) FLOPs, as callables."""
    B, T, I = x.shape
    O = d.shape[2]
    xf, dft, dt = x.reshape(B * T, I), d.reshape(B * T, O).t(), d.transpose(1, 2)
    return {"matmul": lambda: torch.matmul(dft, xf, out=out_mm),
            "bmm": lambda: torch.bmm(dt, x, out=out_bmm)}


def pct_of_gemm(kernel_ms: float, gemm_ms: float) -> float:
    """Kernel throughput as % of a GEMM of equal FLOPs (both do gemm_flops)."""
    return 100.0 * gemm_ms / kernel_ms


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


def bench_cuda(args, shapes, dtypes, ops, device="cuda", timeit=None):
    """The Triton kernels vs the GEMMs. ``device``/``timeit`` exist for the tests, which run this
    path on the CPU under TRITON_INTERPRET=1 with a plain timer (ms)."""
    import triton

    from bioprune.kernels import triton_sq

    B, T = args.batch or 16, args.seq or 512
    rows, failed = [], False
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    name = torch.cuda.get_device_name(dev) if cuda else "cpu (Triton interpreter)"
    print(f"# {name} | torch {torch.__version__} | triton "
          f"{triton.__version__} | B={B} T={T} bias={args.bias} | Triton kernels vs GEMM of "
          f"equal FLOPs (matmul: summed gradient, bmm: per-sample), median", flush=True)

    if timeit is None:
        from triton.testing import do_bench

        def timeit(fn):
            return do_bench(fn, warmup=args.warmup, rep=args.rep, return_mode="median")

    for dname in dtypes:
        dtype = DTYPES[dname]
        for model, O, I, layers in shapes:
            x, d, w, bw = make_inputs(B, T, I, O, dtype, dev, args.seed)
            flops = gemm_flops(B, T, O, I)
            anchors = gemm_anchors(x, d, torch.empty(O, I, device=dev, dtype=dtype),
                                   torch.empty(B, O, I, device=dev, dtype=dtype))
            mm_ms, bmm_ms = timeit(anchors["matmul"]), timeit(anchors["bmm"])
            gemm_ms = min(mm_ms, bmm_ms)
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
                if cuda:
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
                pct = pct_of_gemm(k_ms, gemm_ms)
                rows.append(dict(device=dev.type, gpu=name, kernel="triton", model=model, O=O,
                                 I=I, layers=layers, B=B, T=T,
                                 dtype=dname, op=OP_NAMES[op], flops=flops, kernel_ms=k_ms,
                                 tflops=flops / k_ms / 1e9, matmul_ms=mm_ms, bmm_ms=bmm_ms,
                                 gemm_ms=gemm_ms, gemm_tflops=flops / gemm_ms / 1e9,
                                 x_gemm=k_ms / gemm_ms, pct_gemm=pct,
                                 target_pass=(pct >= KERNEL_PCT_OF_GEMM_MIN) if cuda else None,
                                 reference_ms=r_ms,
                                 speedup_vs_reference=r_ms / k_ms, rel_err=err, ok=ok,
                                 config=cfg_s))
                print_row_cuda(rows[-1], header=len(rows) == 1)
    return rows, failed


def print_row_cuda(r, header):
    if header:
        print(f"{'model':10} {'O x I':>11} {'n':>3} {'dtype':5} {'op':17} {'kernel ms':>9} "
              f"{'TFLOP/s':>7} {'mm ms':>7} {'bmm ms':>7} {'% GEMM':>6} {'≥70%':4} {'ref ms':>7} "
              f"{'vs ref':>6} {'rel err':>7}  config")
    print(f"{r['model']:10} {r['O']:>5}x{r['I']:<5} {r['layers']:>3} {r['dtype']:5} {r['op']:17} "
          f"{r['kernel_ms']:9.4f} {r['tflops']:7.1f} {r['matmul_ms']:7.4f} {r['bmm_ms']:7.4f} "
          f"{r['pct_gemm']:6.1f} {mark(r['target_pass']):4} "
          f"{r['reference_ms']:7.3f} {r['speedup_vs_reference']:5.1f}x {r['rel_err']:7.1e}"
          f"{'' if r['ok'] else ' WRONG'}  {r['config']}", flush=True)


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
    for model, O, I, layers in shapes:
        flops = gemm_flops(B, T, O, I)
        x32, d32, w, bw = make_inputs(B, T, I, O, torch.float32, "cpu", args.seed)
        anchors = gemm_anchors(x32, d32, torch.empty(O, I), torch.empty(B, O, I))
        cases, fns = [], [anchors["matmul"], anchors["bmm"]]
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
        mm_ms, bmm_ms, *op_ms = cpu_times(fns, args.repeats, args.cpu_stat)
        gemm_ms = min(mm_ms, bmm_ms)
        for (dname, op, err), ms in zip(cases, op_ms):
            ok = args.no_check or err <= 1e-4
            failed |= not ok
            rows.append(dict(device="cpu", kernel="torch", model=model, O=O, I=I, layers=layers,
                             B=B, T=T,
                             dtype=dname, op=OP_NAMES[op], flops=flops, torch_ms=ms,
                             gflops=flops / ms / 1e6, matmul_ms=mm_ms, bmm_ms=bmm_ms,
                             gemm_ms=gemm_ms, x_gemm=ms / gemm_ms,
                             pct_gemm=pct_of_gemm(ms, gemm_ms),
                             rel_err=err, ok=ok))
            print_row_cpu(rows[-1], header=len(rows) == 1)
    return rows, failed


def print_row_cpu(r, header):
    if header:
        print(f"{'model':10} {'O x I':>11} {'n':>3} {'dtype':5} {'op':17} {'torch ms':>9} "
              f"{'GFLOP/s':>8} {'mm ms':>8} {'bmm ms':>8} {'% GEMM':>6} {'rel err':>8}")
    print(f"{r['model']:10} {r['O']:>5}x{r['I']:<5} {r['layers']:>3} {r['dtype']:5} {r['op']:17} "
          f"{r['torch_ms']:9.2f} {r['gflops']:8.1f} {r['matmul_ms']:8.2f} {r['bmm_ms']:8.2f} "
          f"{r['pct_gemm']:6.1f} {r['rel_err']:8.1e}{'' if r['ok'] else ' WRONG'}", flush=True)


def per_model(rows) -> list[dict]:
    """Each (model, dtype, op) as a whole: % GEMM of all its linear layers together, i.e. the
    shapes weighted by their layer counts, 100 · Σ n·GEMM ms / Σ n·kernel ms; and its worst
    shape."""
    out, groups = [], {}
    for r in rows:
        groups.setdefault((r["model"], r["dtype"], r["op"]), []).append(r)
    for (model, dtype, op), rs in groups.items():
        k = sum(r["layers"] * r.get("kernel_ms", r.get("torch_ms")) for r in rs)
        g = sum(r["layers"] * r["gemm_ms"] for r in rs)
        worst = min(rs, key=lambda r: r["pct_gemm"])
        out.append(dict(model=model, dtype=dtype, op=op, layers=sum(r["layers"] for r in rs),
                        pct_gemm=pct_of_gemm(k, g),
                        worst=f"{worst['O']}x{worst['I']} {worst['pct_gemm']:.0f}%"))
    return out


def kernel_targets(models: list[dict], on_gpu: bool) -> list[dict]:
    """% GEMM ≥ 70 per model and op for the Triton kernels on CUDA; recorded without a verdict
    elsewhere (the PyTorch path on the CPU, or the Triton interpreter)."""
    return [check(f"kernels {m['model']} {m['op']} {m['dtype']}: % of GEMM (all layers)",
                  m["pct_gemm"], ">=", KERNEL_PCT_OF_GEMM_MIN, "%", applies=on_gpu,
                  note=f"worst shape {m['worst']}" + ("" if on_gpu else "; not Triton on CUDA"))
            for m in models]


def summarise(rows):
    if not rows:
        return []
    device, kernel = rows[0]["device"], rows[0]["kernel"]
    models = per_model(rows)
    what = "Triton kernels" if kernel == "triton" else "PyTorch path"
    print(f"\n# {what} as % of GEMM throughput, all linear layers of each model (layer-weighted):")
    for m in models:
        print(f"#   {m['model']:10} {m['dtype']:5} {m['op']:17} {m['pct_gemm']:6.1f}%  "
              f"({m['layers']} layers; worst shape {m['worst']})")
    if kernel == "triton":
        sp = [r["speedup_vs_reference"] for r in rows
              if r["speedup_vs_reference"] == r["speedup_vs_reference"]]   # not NaN
        if sp:
            print(f"# geometric mean speed-up vs PyTorch path: "
                  f"{math.exp(statistics.fmean(math.log(s) for s in sp)):.1f}x")
    targets = kernel_targets(models, device == "cuda" and kernel == "triton")
    print_targets(targets, "targets (kernels)")
    return targets


def main(argv=None):
    args = parse_args(argv)
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        print(f"kernels bench: --device cuda but CUDA is not available "
              f"(torch {torch.__version__}); run without --device for the CPU benchmark",
              file=sys.stderr)
        return NO_CUDA
    args.models = args.models or DEFAULT_MODELS["cuda" if use_cuda else "cpu"]
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
    targets = summarise(rows)
    if args.json:
        meta = dict(device=rows[0]["device"] if rows else None, models=args.models,
                    shapes=args.shapes, dtypes=dtypes, ops=[OP_NAMES[o] for o in ops],
                    torch=torch.__version__)
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "rows": rows, "models": per_model(rows), "targets": targets},
                      fh, indent=1)
    if failed:
        print("# correctness check FAILED for some rows", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
