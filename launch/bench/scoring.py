"""Scoring-pass cost against a training step, and against torch.func per-sample gradients.

    python launch/bench/scoring.py                       # tiny and mid rnafm, length 256, batch 16
    python launch/bench/scoring.py --configs rnafm:mid esmc:tiny --length 512 --batch 8

For each model, on the same batch (random sequences of exactly --length residues):

- train:     one training forward + backward (weight gradients, what DeepSpeed runs);
- score:     bioprune's scoring pass (forward, activation-only backward, fused per-sample
             weighted squared-gradient reductions for every parameter) — goal ≤ 1.3 × train;
- fisher:    bioprune's Fisher pass (same, accumulating Σ_b g_b²);
- torch.func: vmap(grad) per-sample gradients of every parameter, then the same weighted sum
             (the approach of the paper's public code, there on one layer).

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


def run_arm(arm: str, model: str, size: str, length: int, batch_size: int, repeats: int,
            backend: str | None) -> dict:
    import numpy as np
    import torch

    from bioprune.engine.data.batching import make_batch, per_sample_loss
    from bioprune.engine.influence.grad_sample import Mode, SquaredGradCollector
    from bioprune.engine.models import build_model, trainable_parameters
    from bioprune.engine.data.sequence_list import SequenceList

    torch.manual_seed(0)
    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    bundle = build_model(model, size)
    m = bundle.module.to(dev)
    molecule = "rna" if model == "rnafm" else "protein"
    corpus = SequenceList.random(batch_size, length, molecule=molecule, seed=1)
    batch = make_batch(corpus, np.arange(batch_size), bundle, 0, length).to(dev)
    params = trainable_parameters(m)
    n_params = sum(p.numel() for _, p in params)
    weights = {n: torch.rand_like(p, dtype=torch.float32) + 0.5 for n, p in params}

    if arm == "train":
        m.train()

        def step():
            loss = per_sample_loss(m(batch.tokens), batch.labels).mean()
            loss.backward()
            for p in m.parameters():
                p.grad = None
    elif arm in ("score", "fisher"):
        m.eval()
        mode = Mode.SCORE if arm == "score" else Mode.FISHER
        col = SquaredGradCollector(bundle, params, mode, weights=weights if arm == "score" else None,
                                   backend=backend)
        col.__enter__()

        def step():
            per_sample_loss(m(batch.tokens), batch.labels).sum().backward()
            col.flush()
            col.take_scores()
    else:
        from torch.func import functional_call, grad, vmap

        m.eval()
        names = [n for n, _ in params]
        frozen = {n: p.detach() for n, p in m.named_parameters()}
        forward = ((lambda p, t: _rnafm_functional_forward_call(m, p, t)) if model == "rnafm"
                   else (lambda p, t: functional_call(m, p, (t,))))

        def loss_fn(trainable, tokens, labels):
            full = dict(frozen)
            full.update(trainable)
            return per_sample_loss(forward(full, tokens[None]), labels[None])[0]

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

    base = rss_mb()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    step()  # warm-up
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    mem = (torch.cuda.max_memory_allocated() / 2**20) if cuda else peak_rss_mb() - base
    return {"arm": arm, "model": f"{model}:{size}", "seconds": statistics.median(times),
            "peak_mb": mem, "params": n_params, "device": str(dev)}


def _rnafm_functional_forward_call(module, params, tokens):
    import torch

    # bind the (vmapped) parameters to the module, then run the vmap-able forward
    with torch.nn.utils.stateless._reparametrize_module(module, params):
        return _rnafm_functional_forward(module.net, tokens)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["rnafm:tiny", "rnafm:mid"],
                   help="model:size pairs to measure")
    p.add_argument("--length", type=int, default=256, help="residues per sequence")
    p.add_argument("--batch", type=int, default=16, help="micro-batch size")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions per arm (median)")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds of all arms in turn; the reported time is the median of rounds")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS, help="what to measure")
    p.add_argument("--backend", choices=("auto", "torch", "triton"), default="auto",
                   help="kernel backend of the score/fisher arms")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--_arm", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    backend = None if args.backend == "auto" else args.backend
    if args._arm:  # child process: one arm
        arm, cfg = args._arm.split("@")
        model, size = cfg.split(":")
        print("RESULT " + json.dumps(run_arm(arm, model, size, args.length, args.batch,
                                             args.repeats, backend)), flush=True)
        return 0
    runs: dict = {}
    for rnd in range(args.rounds):
        for cfg in args.configs:
            for arm in args.arms:
                cmd = [sys.executable, os.path.abspath(__file__), "--_arm", f"{arm}@{cfg}",
                       "--length", str(args.length), "--batch", str(args.batch),
                       "--repeats", str(args.repeats), "--backend", args.backend]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
                if proc.returncode != 0 or not line:
                    print(f"{cfg} {arm}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                    continue
                r = json.loads(line[0][7:])
                runs.setdefault((cfg, arm), []).append(r)
                print(f"  round {rnd + 1}: {cfg:<12} {arm:<11} {r['seconds'] * 1e3:9.1f} ms  "
                      f"{r['peak_mb']:8.1f} MB", flush=True)
    results = []
    for (cfg, arm), rs in runs.items():
        results.append(dict(rs[0], seconds=statistics.median(r["seconds"] for r in rs),
                            peak_mb=max(r["peak_mb"] for r in rs),
                            rounds=[r["seconds"] for r in rs]))
    print(f"\nlength {args.length}, micro-batch {args.batch}, median of {args.repeats} x {args.rounds} rounds, "
          f"device {results[0]['device'] if results else '?'}")
    print(f"{'model':<12} {'params':>10} {'arm':<11} {'ms/batch':>10} {'÷ train':>8} {'peak MB':>9}")
    for cfg in args.configs:
        rows = [r for r in results if r["model"] == cfg]
        train = next((r["seconds"] for r in rows if r["arm"] == "train"), None)
        for r in rows:
            ratio = f"{r['seconds'] / train:8.2f}" if train else "       -"
            print(f"{cfg:<12} {r['params']:>10} {r['arm']:<11} {r['seconds'] * 1e3:10.1f} {ratio} "
                  f"{r['peak_mb']:9.1f}")
    if args.json:
        from bioprune.engine.io.atomic import write_json

        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
