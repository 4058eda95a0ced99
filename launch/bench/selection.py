"""Benchmark of the distributed selector against the single-process NumPy approach.

    python launch/bench/selection.py                 # n = 10^8, 1 and 2 ranks + NumPy baseline
    python launch/bench/selection.py --n 10000000 --ranks 1 2 3 --no-baseline

Each rank generates its own contiguous share of n float64 scores in-process (no files; score of
corpus index i = round(-log(1 - u_i), 6) with u_i from hash(seed, i): exponential, with ties), then
runs Top-I and CCI (budget 200,000 by default) through
``bioprune.engine.selection.exact.select`` and records wall time (barrier to coreset on rank 0)
and peak RSS (VmHWM, reset before each run via /proc/self/clear_refs) per rank. RSS "beyond
baseline" = peak minus the RSS after imports, before the data existed, i.e. the share of (index,
score) data plus the selector's own memory.

The baseline reproduces the approach of the paper's public code in one process: a full argsort
of the scores for the cut-off / the top k, then one boolean pass over the whole retained array
per stratum. Finally a projection for 10^9 and 10^10 scores on a 64-rank cluster is printed from
the measured per-element cost and the all-reduce rounds / bytes counted by the selector.
"""
from __future__ import annotations

import os
import sys
import argparse
import hashlib
import json
import math
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
GEN_STREAM = 1000          # hash stream of the synthetic scores (not a selection stream)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", "--size", dest="n", type=float, default=1e8,
                   help="number of scores (default 1e8)")
    p.add_argument("--budget", type=int, default=200_000, help="coreset size")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="world sizes to run")
    p.add_argument("--strategies", nargs="+", default=["topk", "cci"],
                   choices=["topk", "cci", "random"])
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic scores")
    p.add_argument("--no-baseline", action="store_true", help="skip the NumPy baseline")
    p.add_argument("--no-validate", action="store_true",
                   help="skip the exact permutation check of the indices (timed by default)")
    p.add_argument("--json", default=None, help="also write all results to this JSON file")
    # projection assumptions
    p.add_argument("--proj-ranks", type=int, default=64)
    p.add_argument("--proj-latency-us", type=float, default=50.0,
                   help="per-hop all-reduce latency (tree: log2(P) hops) on the cluster")
    p.add_argument("--proj-bw-gbs", type=float, default=10.0,
                   help="per-rank network bandwidth in GB/s (InfiniBand HDR, after overheads)")
    # internal modes
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.n = int(a.n)
    return a


# ----------------------------------------------------------------------------- measurement

def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def rss() -> int:
    return _status("VmRSS")


def peak() -> int:
    return _status("VmHWM")


def reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def generate(a: int, b: int, seed: int):
    """Corpus indices a..b-1 and their synthetic scores, chunk by chunk (no big temporaries)."""
    from bioprune.engine.runtime.hashing import hash_keys, uniform

    index = np.arange(a, b, dtype=np.int64)
    score = np.empty(b - a, dtype=np.float64)
    step = 1 << 20
    for s in range(0, b - a, step):
        u = uniform(hash_keys(seed, index[s:s + step], GEN_STREAM))
        score[s:s + step] = np.round(-np.log1p(-u), 6)
    return index, score


# ----------------------------------------------------------------------------- workers

def worker(args) -> int:
    from bioprune.engine.runtime import distributed
    from bioprune.engine.selection.exact import select
    from bioprune.engine.runtime.collectives import Comm
    from bioprune.engine.runtime.malloc import NUMPY_PASSES, set_mmap_threshold

    distributed.init()
    set_mmap_threshold(NUMPY_PASSES)   # also for the generated data, as in the baseline
    comm = Comm()
    r, w = comm.rank, comm.world
    base = rss()
    a, b = r * args.n // w, (r + 1) * args.n // w
    index, score = generate(a, b, args.seed)
    data_rss = rss()
    recs = []
    for strategy in args.strategies:
        c = Comm()
        distributed.barrier()
        reset_peak()
        t0 = time.perf_counter()
        res = select(index, score, strategy, args.budget, comm=c, validate=not args.no_validate)
        distributed.barrier()
        wall = time.perf_counter() - t0
        rec = {"strategy": strategy, "rank": r, "world": w, "wall_s": wall, "peak_rss": peak(),
               "base_rss": base, "data_rss": data_rss, "share": int(b - a),
               "timings": res.report["timings_s"], "rounds": c.rounds, "bytes": c.bytes,
               "a2a_calls": c.a2a_calls, "a2a_bytes": c.a2a_bytes}
        if res.indices is not None:
            rec["sha256"] = hashlib.sha256(res.indices.tobytes()).hexdigest()[:16]
        recs.append(rec)
        del res
    allrecs = comm.allgather_object(recs)
    if r == 0:
        Path(args.out).write_text(json.dumps([x for rr in allrecs for x in rr]))
    distributed.finalize()
    return 0


def baseline(args) -> int:
    """The paper's public code's approach, one process: full argsort, a boolean pass per stratum."""
    from bioprune.engine.runtime.malloc import NUMPY_PASSES, set_mmap_threshold
    from bioprune.engine.selection.rules import strata_budgets

    set_mmap_threshold(NUMPY_PASSES)
    base = rss()
    _, score = generate(0, args.n, args.seed)     # the reference code keeps only the scores
    data_rss = rss()
    recs = []
    K, beta = 50, 0.05
    for strategy in args.strategies:
        reset_peak()
        t0 = time.perf_counter()
        order = np.argsort(score)[::-1]                  # full argsort, descending
        if strategy == "topk":
            sel = np.sort(order[:args.budget])
        elif strategy == "cci":
            c = int(beta * args.n)
            kept = order[c:]
            s = score[kept]
            lo, hi = s.min(), s.max()
            edges = np.linspace(lo, hi, K + 1)
            pools = []
            for j in range(K):                           # one boolean pass per stratum
                m = (s >= edges[j]) & ((s < edges[j + 1]) if j < K - 1 else (s <= edges[j + 1]))
                pools.append(kept[m])
            budgets = strata_budgets([p.size for p in pools], args.budget)
            rng = np.random.default_rng(0)
            sel = np.sort(np.concatenate([rng.choice(p, int(k), replace=False)
                                          for p, k in zip(pools, budgets)]))
        else:
            sel = np.sort(np.random.default_rng(0).choice(args.n, args.budget, replace=False))
        wall = time.perf_counter() - t0
        recs.append({"strategy": strategy, "rank": 0, "world": 1, "wall_s": wall,
                     "peak_rss": peak(), "base_rss": base, "data_rss": data_rss,
                     "share": args.n, "selected": int(sel.size)})
        del order, sel
    Path(args.out).write_text(json.dumps(recs))
    return 0


# ----------------------------------------------------------------------------- orchestration

def _run(cmd, timeout=1800):
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    if proc.returncode != 0:
        sys.stderr.write(out[-5000:])
        raise SystemExit(f"benchmark step failed: {' '.join(cmd)}")
    return out


def _common(args):
    c = ["--size", str(args.n), "--budget", str(args.budget), "--seed", str(args.seed),
         "--strategies", *args.strategies]
    return c + (["--no-validate"] if args.no_validate else [])


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    if args.baseline:
        return baseline(args)
    from bioprune.engine.runtime.launching import entry_command

    me = str(Path(__file__).resolve())
    tmp = Path(tempfile.mkdtemp(prefix="bench_select_"))
    results = []
    try:
        for w in args.ranks:
            out = tmp / f"w{w}.json"
            cmd = entry_command(me, ["--worker", "--out", out, *_common(args)], w)
            print(f"running {w} rank(s) ...", flush=True)
            _run(cmd)
            results += [dict(r, method=f"bioprune, {w} rank(s)")
                        for r in json.loads(out.read_text())]
        if not args.no_baseline:
            out = tmp / "baseline.json"
            print("running the NumPy baseline ...", flush=True)
            _run([sys.executable, me, "--baseline", "--out", str(out)] + _common(args))
            results += [dict(r, method="NumPy argsort + per-stratum passes (1 process)")
                        for r in json.loads(out.read_text())]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(args, results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


def report(args, results) -> None:
    gib = 1024 ** 3
    print(f"\nn = {args.n:,} float64 scores, budget {args.budget:,}; this machine: "
          f"{os.cpu_count()} CPU cores\n")
    print("| method | strategy | wall (s) | peak RSS / rank (GiB) | beyond baseline / rank (GiB) "
          "| (index, score) share / rank (GiB) | ratio | coreset sha256 |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    groups = {}
    for r in results:
        groups.setdefault((r["method"], r["strategy"]), []).append(r)
    for (method, strategy), rs in groups.items():
        wall = max(r["wall_s"] for r in rs)
        pk = max(r["peak_rss"] for r in rs)
        beyond = max(r["peak_rss"] - r["base_rss"] for r in rs)
        share = max(r["share"] for r in rs) * 16 / gib
        sha = next((r.get("sha256") for r in rs if r.get("sha256")), "")
        print(f"| {method} | {strategy} | {wall:.2f} | {pk / gib:.2f} | {beyond / gib:.2f} | "
              f"{share:.2f} | {beyond / gib / share:.2f} | {sha} |")
    one = [r for r in results if r.get("world") == 1 and "timings" in r]
    multi = [r for r in results if r.get("world", 1) > 1]
    for r in one:
        t = ", ".join(f"{k} {v:.2f}" for k, v in r["timings"].items() if k != "total")
        print(f"\n1-rank {r['strategy']} phases (s): {t}")
    if not one:
        return
    P = args.proj_ranks
    from bioprune.engine.runtime.index_check import SLICE

    lat = args.proj_latency_us * 1e-6 * math.log2(P)
    bw = args.proj_bw_gbs * 1e9
    print(f"\nProjection to a {P}-rank cluster: compute = the per-element time measured on 1 rank "
          f"here x share; each all-reduce = {args.proj_latency_us:g} us x log2(P) + 2 x bytes / "
          f"{args.proj_bw_gbs:g} GB/s; index check = 2 all-to-alls per {SLICE:,} local indices, "
          f"at worst all 8-byte indices crossing the network (none when shares align with owner "
          f"ranges); gather of the coreset = 8 bytes x budget to rank 0.")
    print("\n| n | strategy | share / rank | compute (s) | all-reduces | all-reduce (s) "
          "| index check comm. (s) | projected (s) |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in one:
        per_elem = r["wall_s"] / r["share"]
        m = next((x for x in multi if x["strategy"] == r["strategy"]), r)
        for n in (10 ** 9, 10 ** 10):
            share = n / P
            compute = per_elem * share
            ar = m["rounds"] * lat + 2 * m["bytes"] / bw
            a2a = 2 * math.ceil(share / SLICE) * lat + 8 * share / bw + 8 * args.budget / bw
            print(f"| {n:.0e} | {r['strategy']} | {share:,.0f} | {compute:.2f} | {m['rounds']} | "
                  f"{ar:.3f} | {a2a:.3f} | {compute + ar + a2a:.2f} |")

if __name__ == "__main__":
    sys.exit(main())
