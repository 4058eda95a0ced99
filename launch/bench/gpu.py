"""The GPU throughput report in one command:

    make bench-gpu                        # = python launch/bench/gpu.py --out runs/bench-gpu
    python launch/bench/gpu.py --scoring "--configs esmc:600m" --kernels "--models esmc:600m"

runs, on CUDA,

1. ``kernel_ops.py --device cuda``: the fused Triton ``fisher_accumulate`` / ``weighted_sq_norm``
   against cuBLAS GEMMs of equal FLOPs on the linear-layer shapes of ESM-C 600M, ESM-C 300M and
   RNA-FM (bf16, B = 16, T = 512) → OUT/kernels.json;
2. ``scoring.py --device cuda``: tokens/s per GPU of training forward+backward, the Fisher pass
   and the scoring pass for esmc:300m, esmc:600m and rnafm:base in bf16 autocast (fp32
   accumulation), with the PyTorch and the Triton kernel paths side by side → OUT/scoring.json;
3. ``attention.py --device cuda``: RNA-FM base forward+backward with fm's explicit attention
   against SDPA, and scoring real RNAs with one mask against the default 4-copy plan (bf16)
   → OUT/attention.json;

prints their tables, then every target marked PASS / FAIL (n/a where a target does
not apply, e.g. the H100 tokens/s target on another GPU) and writes OUT/summary.json.
Targets (``targets.py``): scoring ≤ 1.1 × training forward+backward; kernels ≥ 70% of GEMM
throughput; ESM-C 600M scoring ≥ 80k tokens/s on an H100; RNA-FM attention: SDPA no slower
than fm's explicit path; scoring with the default 4-copy masks ≤ 2 × one mask per sequence.

Without CUDA it refuses with one line and exit code 2 (``make bench`` is the CPU benchmark).
TRITON_INTERPRET is removed from the benchmarks' environment: interpreted kernels on a GPU
machine would time the interpreter. Exit code 1 if a benchmark failed (an arm crashed, or a
kernel disagreed with the PyTorch path); a FAIL verdict is a measurement, not an error (exit 0).
"""
from __future__ import annotations

import os
import sys
import argparse
import json
import shlex
import subprocess
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = (("kernels", "kernel_ops.py"), ("scoring", "scoring.py"), ("attention", "attention.py"))
NO_CUDA = 2


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench-gpu", help="where the JSON files go (%(default)s)")
    p.add_argument("--kernels", default="", metavar="ARGS",
                   help="extra arguments for kernel_ops.py, one quoted string")
    p.add_argument("--scoring", default="", metavar="ARGS",
                   help="extra arguments for scoring.py, one quoted string")
    p.add_argument("--attention", default="--size base --precision bf16 --tokens 16384",
                   metavar="ARGS", help="arguments for attention.py, one quoted string "
                                        "(default: %(default)s)")
    p.add_argument("--skip", nargs="*", default=[], choices=[b for b, _ in BENCHES],
                   help="benchmarks not to run")
    # The tests run the whole report on the CPU with this (and tiny settings).
    p.add_argument("--_device", default="cuda", choices=("cuda", "cpu"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if args._device == "cuda" and not torch.cuda.is_available():
        print(f"bench-gpu: no CUDA device here (torch {torch.__version__}); this report measures "
              "GPUs only, `make bench` is the CPU benchmark", file=sys.stderr)
        return NO_CUDA
    from bioprune.launch.bench.targets import print_targets

    env = dict(os.environ)
    if args._device == "cuda" and env.pop("TRITON_INTERPRET", None):
        print("bench-gpu: TRITON_INTERPRET unset for the benchmarks "
              "(it would time the interpreter)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"device": torch.cuda.get_device_name() if args._device == "cuda" else "cpu",
               "torch": torch.__version__, "cuda": torch.version.cuda, "commit": _git_commit(),
               "started": time.strftime("%Y-%m-%d %H:%M:%S"), "runs": {}, "targets": []}
    for name, script in BENCHES:
        if name in args.skip:
            continue
        path = out / f"{name}.json"
        path.unlink(missing_ok=True)  # never report an earlier run's numbers
        cmd = [sys.executable, str(HERE / script), "--device", args._device, "--json", str(path),
               *shlex.split(getattr(args, name))]
        print(f"\n=== {name}: {shlex.join(cmd)}", flush=True)
        t = time.time()
        rc = subprocess.run(cmd, env=env).returncode
        summary["runs"][name] = {"command": shlex.join(cmd), "rc": rc,
                                 "seconds": round(time.time() - t, 1), "json": str(path)}
        if path.exists():
            summary["targets"] += json.loads(path.read_text())["targets"]
    print(f"\n=== bench-gpu: {summary['device']}, torch {summary['torch']}, "
          f"commit {summary['commit']}")
    print_targets(summary["targets"], "targets")
    counts = {v: sum(t["pass"] is k for t in summary["targets"])
              for k, v in ((True, "pass"), (False, "fail"), (None, "n/a"))}
    summary["counts"] = counts
    failed = [n for n, r in summary["runs"].items() if r["rc"] != 0]
    print(f"{counts['pass']} PASS, {counts['fail']} FAIL, {counts['n/a']} n/a"
          + (f"; benchmark(s) that did not finish: {', '.join(failed)}" if failed else "")
          + f"; JSON in {out}/")
    from bioprune.engine.io.atomic import write_json

    write_json(out / "summary.json", summary)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
