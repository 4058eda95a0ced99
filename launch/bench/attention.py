"""RNA-FM attention: fm's explicit path against SDPA (``models.fm_attention``), side by side.

    python launch/bench/attention.py                          # CPU: tiny RNA-FM, fp32
    python launch/bench/attention.py --device cuda --size base --precision bf16

Two measurements, each arm alternating with the other in one process (a shared machine drifts;
report the ratio). On the CPU the times are the process's CPU time (``--threads`` 1 by default),
on CUDA wall time after a synchronise:

- ``fwd+bwd``: one forward and backward of the whole model (what training and scoring both run)
  on random sequences of each --lengths, --tokens residues per batch, median of --repeats;
  the largest relative difference of the logits between the two paths is printed beside it.
- ``score``: the engine's scoring of --n real RNAs of the shared corpus (lengths as they come,
  cropped to the model's 1022), ``passes.Scorer`` with unit weights (the cost does not depend on
  them), with one 15 % mask (K1, the paper's) and with the default plan (C1r25m: one cover of 4
  mask-token-only masks of 25 %), each on both paths: ms per sequence.

Writes OUT/results.json when --out is given; --json FILE adds the targets (``targets.py``) that
`make bench-gpu` (``gpu.py``) collects: SDPA no slower than fm's path at the longest length, and
the default plan's scoring at most ``DEFAULT_OVER_K1_MAX`` × one mask (the cost target of the
score-estimator work, which the CPU does not meet: copies cost linearly there).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import numpy as np


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="tiny", help="RNA-FM size (tiny, mid, base)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="autocast dtype of the passes")
    p.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256, 512, 1022],
                   help="sequence lengths of the fwd+bwd arm")
    p.add_argument("--tokens", type=int, default=4096,
                   help="residues per fwd+bwd batch (batch = tokens // length, at least 1)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per arm and length")
    p.add_argument("--n", type=int, default=200,
                   help="real RNAs scored in the score arm (0 skips it)")
    p.add_argument("--micro-batch-size", type=int, default=16,
                   help="rows per scoring batch, as score.py's flag (micro-batch / 4 sequences)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out", default=None, help="directory for results.json")
    p.add_argument("--json", default=None, metavar="FILE",
                   help="also write the results with their targets here (what `make bench-gpu` "
                        "collects)")
    return p.parse_args(argv)


def _clock(device: str) -> float:
    """CPU seconds of this process on the CPU (other jobs on a shared machine then inflate the
    arms much less than wall time does; the arms run one thread); wall seconds on CUDA."""
    return time.perf_counter() if device.startswith("cuda") else time.process_time()


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def fwd_bwd(modules: dict, length: int, args) -> dict:
    """Median seconds of forward + backward per path, and their largest logit difference."""
    import torch

    batch = max(1, args.tokens // length)
    g = torch.Generator().manual_seed(length)
    tokens = torch.randint(4, 24, (batch, length + 2), generator=g)
    tokens[:, 0], tokens[:, -1] = 0, 2      # <cls> ... <eos>
    tokens = tokens.to(args.device)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    times = {name: [] for name in modules}
    logits = {}

    def once(name, m):
        m.zero_grad(set_to_none=True)
        with torch.autocast(torch.device(args.device).type, dtype=dtype,
                            enabled=dtype != torch.float32):
            y = m(tokens)
        y.float().square().mean().backward()
        return y.detach().float()

    for name, m in modules.items():          # warm-up, and the outputs to compare
        logits[name] = once(name, m)
    for _ in range(args.repeats):
        for name, m in modules.items():      # alternate the arms
            _sync(args.device)
            t = _clock(args.device)
            once(name, m)
            _sync(args.device)
            times[name].append(_clock(args.device) - t)
    a, b = logits.values()
    return {"batch": batch, **{f"{n}_ms": 1e3 * statistics.median(v) for n, v in times.items()},
            "max_rel_diff": float((a - b).abs().max() / a.abs().max())}


PLANS = {"K1": dict(draws=1),                                   # one 15 % mask, the paper's
         "C1r25m": dict(covers=1, rate=0.25, mask_only=True)}   # the default: 4 copies


def score_cost(bundles: dict, args) -> dict:
    """ms per sequence of scoring real RNAs, for each plan of PLANS and each attention path, the
    four arms alternating (the cheaper of two rounds)."""
    import torch

    from bioprune.engine.data.batching import MaskPlan
    from bioprune.engine.influence import damping as dmp
    from bioprune.engine.influence.passes import Scorer
    from bioprune.engine.models import trainable_parameters
    from bioprune.launch.bench.scores import build_corpus

    corpus, _ = build_corpus("rnafm", args.n, 1022, Path(args.out or "runs/bench_attention"))
    arms = [(plan, path) for plan in PLANS for path in bundles]
    times = {arm: [] for arm in arms}
    for _ in range(2):
        for plan_name, path in arms:
            bundle, plan = bundles[path], MaskPlan(seed=1, **PLANS[plan_name])
            params, _ = dmp.covered_parameters(bundle.module,
                                               trainable_parameters(bundle.module))
            weights = {n: torch.ones_like(p, device=args.device) for n, p in params}
            with Scorer(bundle, params, weights, seed=0, max_residues=10**6,
                        device=args.device, masks=plan) as scorer:
                _sync(args.device)
                t = _clock(args.device)
                scorer.score_chunk(corpus, np.arange(len(corpus)),
                                   max(1, args.micro_batch_size // plan.copies))
                _sync(args.device)
                times[(plan_name, path)].append((_clock(args.device) - t) / len(corpus))
    return {"n": len(corpus), "median_length": float(np.median(corpus.lengths)),
            "ms_per_seq": {f"{plan}/{path}": 1e3 * min(v) for (plan, path), v in times.items()}}


def main(argv=None) -> int:
    import torch

    from bioprune.engine.io.atomic import write_json
    from bioprune.engine.models import build_model
    from bioprune.engine.models.fm_attention import use_fm_explicit

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sdpa = build_model("rnafm", args.size)
    explicit = copy.deepcopy(sdpa)
    use_fm_explicit(explicit.module)
    bundles = {"explicit": explicit, "sdpa": sdpa}
    modules = {n: b.module.to(args.device).train() for n, b in bundles.items()}
    rows = {}
    print(f"rnafm {args.size} on {args.device}, {args.precision}: fwd+bwd, ms per batch")
    print("| length | batch | fm explicit | SDPA | SDPA ÷ explicit | max rel. diff |")
    print("|---|---|---|---|---|---|")
    for length in args.lengths:
        r = rows[length] = fwd_bwd(modules, length, args)
        print(f"| {length} | {r['batch']} | {r['explicit_ms']:.1f} | {r['sdpa_ms']:.1f} | "
              f"{r['sdpa_ms'] / r['explicit_ms']:.2f} | {r['max_rel_diff']:.1e} |")
    result = {"size": args.size, "device": args.device, "precision": args.precision,
              "threads": args.threads, "fwd_bwd": rows}
    if args.n:
        s = result["score"] = score_cost(bundles, args)
        ms, base = s["ms_per_seq"], s["ms_per_seq"]["K1/explicit"]
        print(f"scoring {s['n']} RNAs (median length {s['median_length']:.0f}), ms per sequence")
        print("| plan | fm explicit | SDPA | SDPA ÷ explicit | ÷ K1 explicit | ÷ K1 SDPA |")
        print("|---|---|---|---|---|---|")
        for plan in PLANS:
            e, f = ms[f"{plan}/explicit"], ms[f"{plan}/sdpa"]
            print(f"| {plan} | {e:.1f} | {f:.1f} | {f / e:.2f} | {f / base:.2f} | "
                  f"{f / ms['K1/sdpa']:.2f} |")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        write_json(Path(args.out) / "results.json", result)
    if args.json:
        write_json(Path(args.json), {**result, "targets": targets(result)})
    return 0


def targets(result: dict) -> list[dict]:
    from bioprune.launch.bench.targets import DEFAULT_OVER_K1_MAX, check

    name = f"attention rnafm:{result['size']}"
    longest = result["fwd_bwd"][max(result["fwd_bwd"])]
    out = [check(f"{name}: SDPA ÷ fm explicit fwd+bwd, L={max(result['fwd_bwd'])}",
                 longest["sdpa_ms"] / longest["explicit_ms"], "<=", 1.0)]
    if "score" in result:
        ms = result["score"]["ms_per_seq"]
        out.append(check(f"{name}: default plan ÷ one mask, scoring (SDPA)",
                         ms["C1r25m/sdpa"] / ms["K1/sdpa"], "<=", DEFAULT_OVER_K1_MAX))
    return out


if __name__ == "__main__":
    raise SystemExit(main())
