"""Scoring-pass cost against a training step, in tokens/s per device, and against torch.func.

    python launch/bench/scoring.py                       # CPU: tiny and mid rnafm, fp32, torch
    python launch/bench/scoring.py --configs rnafm:mid esmc:tiny --length 512 --batch 8
    python launch/bench/scoring.py --device cuda         # GPU: esmc:300m esmc:600m rnafm:base,
                                                         # bf16, torch and triton side by side
                                                         # (part of `make bench-gpu`)

For each model, on the same batch (random sequences of exactly --length residues, one masked
copy per sequence: ``MaskPlan(draws=1)``):

- train:     one training forward + backward (weight gradients, what DeepSpeed runs);
- score:     the engine's scoring call, ``passes.Scorer.score_indices`` (build the batch, forward,
             activation-only backward, fused per-sample weighted squared-gradient reductions for
             every parameter, scores back to the host) — target ≤ 1.1 × train;
- fisher:    the engine's Fisher pass, ``passes.fisher_pass`` over the batch (same, accumulating
             Σ_b g_b², then the 1/M division);
- torch.func: vmap(grad) per-sample gradients of every parameter, then the same weighted sum
             (the approach of the paper's public code, there on one layer).

score and fisher run once per ``--backend`` (torch: chunked bmm; triton: the fused kernels), side
by side in one run. ``--precision bf16`` runs every arm under ``torch.autocast(bfloat16)`` with
fp32 accumulation — what the engine does with ``precision="bf16"`` (``autocast_dtype``). The
engine's calls include building the batch on the host (``make_batch``); the "build ms" column
says how much of their time that is. The train arm gets the batch ready-made.

tokens/s counts the tokens the model really processes: residues + BOS/EOS of every row, never
padding. It is per pass with one mask per sequence. The engine's default ℓ(z) is a mask cover
(one cover of 4 masks of 25 %: 4 masked copies of every sequence in one batch), so scoring a
corpus takes 4 such token passes per sequence: sequences/s = tokens/s ÷ (4 × tokens per
sequence). ``--masks cover`` measures that batch layout directly (4× the rows).

Each arm runs in its own subprocess so its peak memory (max RSS above the process's baseline
after the model is built; on CUDA, max allocated) is its own. Times are medians over --repeats
within a process, then the median over --rounds rounds that run the arms in turn (a shared or
virtual CPU drifts; interleaving keeps the arms' comparison fair).
"""
from __future__ import annotations

import os
import sys
import argparse
import json
import resource
import statistics
import subprocess
import time

ARMS = ("train", "score", "fisher", "torch.func")
BACKEND_ARMS = ("score", "fisher")  # the arms that run the kernels, once per --backend
BACKENDS = ("auto", "torch", "triton")
# Defaults per device: the CPU ones keep `make bench` to a few minutes on a laptop.
DEFAULTS = {
    "cuda": dict(configs=["esmc:300m", "esmc:600m", "rnafm:base"],
                 arms=["train", "score", "fisher"],
                 backend=["torch", "triton"], precision="bf16", length=512, batch=16, repeats=10,
                 rounds=1),
    "cpu": dict(configs=["rnafm:tiny", "rnafm:mid"], arms=list(ARMS), backend=["torch"],
                precision="fp32", length=256, batch=16, repeats=5, rounds=3),
}
NO_CUDA = 2  # exit code of --device cuda without CUDA


def rss_mb() -> float:
    # current RSS from /proc (ru_maxrss is the peak, used at the end)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rnafm_functional_forward(net, tokens):
    """fm.BioBertModel.forward without its data-dependent ``if not padding_mask.any()``, which
    vmap cannot trace (the bench batch has no padding, so the two agree; checked before timing)."""
    padding_mask = tokens.eq(net.padding_idx)
    x = net.embed_scale * net.embed_tokens(tokens) + net.embed_positions(tokens)
    if net.emb_layer_norm_before:
        x = net.emb_layer_norm_before(x)
    x = x * (1 - padding_mask.unsqueeze(-1).type_as(x))
    x = x.transpose(0, 1)
    for layer in net.layers:
        x, _ = layer(x, self_attn_padding_mask=None)
    x = net.emb_layer_norm_after(x).transpose(0, 1)
    return net.lm_head(x)


def real_tokens(batch, bundle) -> int:
    """Tokens the model really processes: residues + BOS/EOS of every row (K rows per sequence
    under a mask cover), never padding."""
    return int((batch.tokens != bundle.pad_id).sum())


def mask_plans():
    from bioprune.engine.data.batching import MaskPlan
    from bioprune.engine.influence.settings import ScoreSettings, mask_plan

    return {"one": MaskPlan(draws=1, seed=0), "cover": mask_plan(ScoreSettings(seed=0))}


def run_arm(arm: str, model: str, size: str, length: int, batch_size: int, repeats: int,
            backend: str | None, precision: str = "fp32", device: str = "cpu",
            masks: str = "one") -> dict:
    import numpy as np
    import torch

    from bioprune.engine.data.batching import expected_loss, make_batch, per_sample_loss
    from bioprune.engine.data.sequence_list import SequenceList
    from bioprune.engine.influence.passes import Scorer, fisher_pass
    from bioprune.engine.models import build_model, trainable_parameters

    torch.manual_seed(0)
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    amp = torch.bfloat16 if precision == "bf16" else None
    plan = mask_plans()[masks]
    bundle = build_model(model, size)
    m = bundle.module.to(dev)
    molecule = "rna" if model == "rnafm" else "protein"
    corpus = SequenceList.random(batch_size, length, molecule=molecule, seed=1)
    idx = np.arange(batch_size)

    def build():
        return make_batch(corpus, idx, bundle, 0, length, masks=plan).to(dev)

    batch = build()
    tokens = real_tokens(batch, bundle)
    params = trainable_parameters(m)
    n_params = sum(p.numel() for _, p in params)
    weights = {n: torch.rand_like(p, dtype=torch.float32) + 0.5 for n, p in params}

    def autocast():
        return torch.autocast(dev.type, dtype=amp, enabled=amp is not None)

    if arm == "train":
        m.train()

        def step():
            with autocast():
                logits = m(batch.tokens)
            expected_loss(logits, batch.labels, batch.copies).mean().backward()
            for p in m.parameters():
                p.grad = None
    elif arm == "score":
        scorer = Scorer(bundle, params, weights, seed=0, max_residues=length, device=dev,
                        backend=backend, autocast_dtype=amp, masks=plan).__enter__()

        def step():
            s = scorer.score_indices(corpus, idx)["score"]
            if not (np.isfinite(s).all() and (s > 0).all()):
                raise RuntimeError(f"scores not finite and positive: {s}")
    elif arm == "fisher":
        def step():
            fisher_pass(bundle, corpus, idx, params, seed=0, max_residues=length,
                        micro_batch_size=batch_size, device=dev, backend=backend,
                        autocast_dtype=amp, masks=plan)
    else:
        from torch.func import functional_call, grad, vmap

        if plan.copies != 1:
            raise SystemExit("torch.func arm: one mask per sequence only (--masks one)")
        m.eval()
        names = [n for n, _ in params]
        frozen = {n: p.detach() for n, p in m.named_parameters()}
        forward = ((lambda p, t: _rnafm_functional_forward_call(m, p, t)) if model == "rnafm"
                   else (lambda p, t: functional_call(m, p, (t,))))

        def loss_fn(trainable, tokens, labels):
            full = dict(frozen)
            full.update(trainable)
            with autocast():
                logits = forward(full, tokens[None])
            return per_sample_loss(logits, labels[None])[0]

        if model == "rnafm":  # the vmap-able forward must be the model's own
            with torch.no_grad():
                ref = m(batch.tokens)
                alt = _rnafm_functional_forward(m.net, batch.tokens)
            assert torch.allclose(ref, alt, rtol=1e-5, atol=1e-5)
        per_sample = vmap(grad(loss_fn), in_dims=(None, 0, 0))

        def step():
            g = per_sample({n: frozen[n] for n in names}, batch.tokens, batch.labels)
            s = sum((g[n].float().square() * weights[n]).flatten(1).sum(1) for n in names)
            return s

    def timed(fn) -> float:
        times = []
        for _ in range(repeats):
            if cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    base = rss_mb()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    step()  # warm-up (Triton autotuning happens here)
    seconds = timed(step)
    mem = (torch.cuda.max_memory_allocated() / 2**20) if cuda else peak_rss_mb() - base
    # the engine's calls build their batch on the host; how much of their time that is
    build_s = timed(build) if arm in BACKEND_ARMS else 0.0
    return {"arm": arm, "backend": backend if arm in BACKEND_ARMS else "-",
            "model": f"{model}:{size}", "seconds": seconds, "build_seconds": build_s,
            "tokens": tokens, "tokens_per_s": tokens / seconds, "sequences": batch_size,
            "copies": plan.copies, "peak_mb": mem, "params": n_params, "precision": precision,
            "device": torch.cuda.get_device_name(dev) if cuda else "cpu"}


def _rnafm_functional_forward_call(module, params, tokens):
    import torch

    # bind the (vmapped) parameters to the module, then run the vmap-able forward
    with torch.nn.utils.stateless._reparametrize_module(module, params):
        return _rnafm_functional_forward(module.net, tokens)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="cuda refuses to run without CUDA (exit 2); auto: cuda when available")
    p.add_argument("--configs", nargs="+", default=None,
                   help="model:size pairs to measure (default: CUDA "
                        f"{' '.join(DEFAULTS['cuda']['configs'])}; CPU "
                        f"{' '.join(DEFAULTS['cpu']['configs'])})")
    p.add_argument("--length", type=int, default=None,
                   help="residues per sequence (CUDA 512, CPU 256)")
    p.add_argument("--batch", type=int, default=None, help="micro-batch size, sequences (16)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed repetitions per arm, median (CUDA 10, CPU 5)")
    p.add_argument("--rounds", type=int, default=None,
                   help="rounds of all arms in turn; the reported time is the median of rounds "
                        "(CUDA 1, CPU 3)")
    p.add_argument("--arms", nargs="+", default=None, choices=ARMS,
                   help="what to measure (CUDA: train score fisher; CPU: all)")
    p.add_argument("--backend", nargs="+", default=None, choices=BACKENDS,
                   help="kernel backends of the score/fisher arms, each measured "
                        "(CUDA: torch triton; CPU: torch; triton on the CPU needs "
                        "TRITON_INTERPRET=1)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                   help="bf16: autocast bf16 with fp32 accumulation, as the engine's "
                        "precision=bf16 (CUDA bf16, CPU fp32)")
    p.add_argument("--masks", choices=("one", "cover"), default="one",
                   help="one masked copy per sequence (default), or the engine's default mask "
                        "cover (7 copies per sequence in the batch)")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--_arm", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"scoring bench: --device cuda but CUDA is not available "
              f"(torch {torch.__version__}); run without --device for the CPU benchmark",
              file=sys.stderr)
        raise SystemExit(NO_CUDA)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    for k, v in DEFAULTS[args.device].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    auto = "triton" if args.device == "cuda" else "torch"
    args.backend = list(dict.fromkeys(auto if b == "auto" else b for b in args.backend))
    return args


def measurements(args) -> list[tuple[str, str, str]]:
    """(config, arm, backend) in the order they run within a round."""
    out = []
    for cfg in args.configs:
        for arm in args.arms:
            for b in (args.backend if arm in BACKEND_ARMS else ["-"]):
                out.append((cfg, arm, b))
    return out


def score_targets(results: list[dict], precision: str) -> list[dict]:
    """The issue-11 targets these results can be checked against; each score row with a train
    row to compare to gets its ratio verdict as ``target``."""
    from bioprune.launch.bench.targets import (ESMC600M_TOKENS_PER_S_MIN, SCORE_OVER_TRAIN_MAX,
                                               check)

    out = []
    for r in results:
        if r["arm"] != "score":
            continue
        interpreted = r["backend"] == "triton" and r["device"] == "cpu"
        if r.get("over_train") is not None:
            r["target"] = check(f"scoring {r['model']} {r['backend']}: score ÷ train fwd+bwd",
                                r["over_train"], "<=", SCORE_OVER_TRAIN_MAX, "x",
                                applies=not interpreted,
                                note=f"{r['device']}, {precision}"
                                     + (", Triton interpreter" if interpreted else ""))
            out.append(r["target"])
        if r["model"] == "esmc:600m":
            h100 = "H100" in r["device"]
            applies = h100 and precision == "bf16" and r["copies"] == 1
            out.append(check(f"scoring esmc:600m {r['backend']}: tokens/s per GPU",
                             r["tokens_per_s"], ">=", ESMC600M_TOKENS_PER_S_MIN, " tok/s",
                             applies=applies,
                             note="" if applies else "target is for an H100, bf16, one mask"))
    return out


def print_table(args, results: list[dict], cover_k: int) -> None:
    from bioprune.launch.bench.targets import verdict

    r0 = results[0] if results else {}
    tok_seq = (args.length + 2)
    prec = ("bf16 autocast, fp32 accumulation" if args.precision == "bf16" else "fp32")
    print(f"\ndevice {r0.get('device', '?')} | {prec} | length {args.length} "
          f"(+BOS/EOS = {tok_seq} tokens/row), micro-batch {args.batch} sequences, "
          + ("one mask per sequence" if args.masks == "one"
             else f"mask cover: {cover_k} rows per sequence")
          + f" | median of {args.repeats} x {args.rounds} rounds")
    print(f"{'model':<11} {'params':>11} {'arm':<10} {'backend':<7} {'ms/batch':>9} "
          f"{'tokens/s':>10} {'÷ train':>8} {'build ms':>8} {'peak MB':>9}  target")
    for cfg in args.configs:
        rows = [r for r in results if r["model"] == cfg]
        for r in rows:
            ratio = f"{r['over_train']:8.2f}" if r.get("over_train") is not None else "       -"
            build = f"{r['build_seconds'] * 1e3:8.1f}" if r["arm"] in BACKEND_ARMS else "       -"
            mark = ""
            if r.get("target"):
                mark = f"≤ {r['target']['bound']} x train: {verdict(r['target'])}"
            print(f"{cfg:<11} {r['params']:>11,} {r['arm']:<10} {r['backend']:<7} "
                  f"{r['seconds'] * 1e3:9.1f} {r['tokens_per_s']:10,.0f} {ratio} {build} "
                  f"{r['peak_mb']:9.1f}  {mark}")
    if args.masks == "one":
        print(f"tokens/s is per pass with one mask per sequence. The engine's default ℓ(z) is a "
              f"mask cover: {cover_k} masked copies per sequence, so scoring costs {cover_k} such "
              f"passes: sequences/s = tokens/s ÷ ({cover_k} x {tok_seq}).")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args._arm:  # child process: one arm
        arm, cfg, backend = args._arm.split("@")
        model, size = cfg.split(":")
        print("RESULT " + json.dumps(run_arm(arm, model, size, args.length, args.batch,
                                             args.repeats, None if backend == "-" else backend,
                                             args.precision,
                                             args.device, args.masks)), flush=True)
        return 0
    runs: dict = {}
    failed = []
    for rnd in range(args.rounds):
        for cfg, arm, backend in measurements(args):
            cmd = [sys.executable, os.path.abspath(__file__), "--_arm", f"{arm}@{cfg}@{backend}",
                   "--device", args.device, "--length", str(args.length),
                   "--batch", str(args.batch),
                   "--repeats", str(args.repeats), "--precision", args.precision,
                   "--masks", args.masks]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not line:
                print(f"{cfg} {arm} {backend}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                failed.append(f"{cfg} {arm} {backend}")
                continue
            r = json.loads(line[0][7:])
            runs.setdefault((cfg, arm, backend), []).append(r)
            print(f"  round {rnd + 1}: {cfg:<11} {arm:<10} {backend:<6} "
                  f"{r['seconds'] * 1e3:9.1f} ms "
                  f"{r['tokens_per_s']:10,.0f} tokens/s {r['peak_mb']:8.1f} MB", flush=True)
    results = []
    for (cfg, arm, backend), rs in runs.items():
        sec = statistics.median(r["seconds"] for r in rs)
        results.append(dict(rs[0], seconds=sec, tokens_per_s=rs[0]["tokens"] / sec,
                            build_seconds=statistics.median(r["build_seconds"] for r in rs),
                            peak_mb=max(r["peak_mb"] for r in rs),
                            rounds=[r["seconds"] for r in rs]))
    for r in results:
        train = next((t["seconds"] for t in results
                      if t["model"] == r["model"] and t["arm"] == "train"), None)
        r["over_train"] = r["seconds"] / train if train else None
    targets = score_targets(results, args.precision)
    cover_k = mask_plans()["cover"].copies
    print_table(args, results, cover_k)

    from bioprune.launch.bench.targets import print_targets

    print_targets(targets, "targets (scoring)")
    if args.json:
        from bioprune.engine.io.atomic import write_json

        meta = {k: getattr(args, k) for k in ("device", "configs", "arms", "backend", "precision",
                                              "length", "batch", "repeats", "rounds", "masks")}
        meta.update(cover_copies=cover_k, failed=failed)
        rows = [{k: v for k, v in r.items() if k != "target"} for r in results]
        write_json(args.json, {"meta": meta, "results": rows, "targets": targets})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
