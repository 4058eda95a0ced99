"""Which score estimator to use: stability against a many-mask reference and across mask seeds,
per unit of cost, measured side by side in one process with the production passes.

    python launch/bench/estimators.py --model rnafm \\
        --checkpoint runs/exp-rna-1pct/reference/final/model.safetensors \\
        --n 400 --out runs/bench_estimators/rna
    python launch/bench/estimators.py --model esmc --train-steps 300 --n 200 \\
        --out runs/bench_estimators/protein

On N sequences drawn (by hash) from the shared corpus, with trained weights (``--checkpoint``, or
a tiny model trained briefly here, cached in OUT), every estimator is run as the pipeline runs it:
the Fisher over a random D_sub (``fisher_pass``) with the estimator's masks, default relative
damping, then ``Scorer`` (fused kernels) over all N, for two mask seeds. The reference is the
expected-loss score with many masks (``--references``: C4 = 4 covers of 7 = 28 training-style
80/10/10 masks, their mean; C4m, the same 28 masks with every chosen residue the mask token, the
quantity the default estimates; C4x, the cross-term over C4's copies). For each
estimator: Spearman against the reference, Spearman between the two mask seeds, Top-I / CCI 10 %
overlap between the seeds, Spearman(score, length), and the cost: masked copies per sequence and
scoring seconds per sequence beside one single-mask scoring pass and one training step
(forward + backward + optimizer step) on the same sequences. Writes OUT/results.json and prints a
markdown table.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

# name -> MaskPlan fields; "x" = the cross-term estimator over the same copies
ESTIMATORS = {"K1": dict(draws=1), "K2": dict(draws=2), "K2x": dict(draws=2, estimator="cross"),
              "K4x": dict(draws=4, estimator="cross"),
              "C1": dict(covers=1),                      # one cover of 7: the old default
              "C1x": dict(covers=1, estimator="cross"), "U": dict(unmasked=True),
              "K1r30": dict(draws=1, rate=0.3), "K2r30": dict(draws=2, rate=0.3),
              # whole covers at higher rates: every residue predicted once in fewer passes;
              # "m": every chosen residue the mask token (no 80/10/10 corruption noise)
              "A2": dict(covers=1, rate=0.5), "C1r25": dict(covers=1, rate=0.25),
              "K1m": dict(draws=1, mask_only=True), "A2m": dict(covers=1, rate=0.5, mask_only=True),
              "C1r33m": dict(covers=1, rate=1 / 3, mask_only=True),
              "C1r25m": dict(covers=1, rate=0.25, mask_only=True),   # the default
              "C1m": dict(covers=1, mask_only=True)}
# many-mask references: the mean over 28 copies (what the old default converges to: ‖E g‖² plus
# the single-mask noise / 28) and the cross-term over the same 28 copies (unbiased for ‖E g‖²)
REFERENCES = {"C4": dict(covers=4), "C4x": dict(covers=4, estimator="cross"), "C2": dict(covers=2),
              "C2x": dict(covers=2, estimator="cross"), "C4m": dict(covers=4, mask_only=True)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("rnafm", "esmc"), default="rnafm")
    p.add_argument("--checkpoint", default=None,
                   help="trained weights (safetensors / .pt) of --model tiny; default: train "
                        "--train-steps steps here (cached in OUT)")
    p.add_argument("--train-steps", type=int, default=300,
                   help="MLM steps of the stand-in model when no --checkpoint is given")
    p.add_argument("--n", type=int, default=500, help="sequences scored")
    p.add_argument("--max-length", type=int, default=256, help="residues kept (a prefix)")
    p.add_argument("--subset-fraction", type=float, default=0.3, help="random D_sub / N")
    p.add_argument("--estimators", nargs="+", default=list(ESTIMATORS), choices=list(ESTIMATORS))
    p.add_argument("--references", nargs="*", choices=list(REFERENCES), default=["C4", "C4m"],
                   help="the many-mask expected-loss scores every estimator is compared with "
                        "(the first is the headline)")
    p.add_argument("--micro-batch", type=int, default=16, help="masked rows per batch")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out", required=True, help="output folder (results.json, model cache)")
    return p.parse_args(argv)


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def fisher_weights(bundle, corpus, params, subset, plan, micro_batch: int):
    """The influence weights 1/(F+λ) (default damping) from the Fisher over ``subset``."""
    from bioprune.engine.influence import damping as dmp
    from bioprune.engine.influence.passes import fisher_pass

    fisher = fisher_pass(bundle, corpus, subset, params, seed=0, max_residues=10**6,
                         micro_batch_size=max(1, micro_batch // plan.copies), device="cpu",
                         masks=plan)
    return dmp.influence_weights(fisher, dmp.Damping(), "cpu")


def score_once(bundle, corpus, params, subset, plan, micro_batch: int) -> tuple[np.ndarray, float]:
    """(scores of every sequence, scoring seconds per sequence) with the production passes, the
    influence weights from the Fisher with ``plan``'s own masks."""
    from bioprune.engine.influence.passes import Scorer

    per_batch = max(1, micro_batch // plan.copies)
    weights = fisher_weights(bundle, corpus, params, subset, plan, micro_batch)
    t = time.time()
    with Scorer(bundle, params, weights, seed=0, max_residues=10**6, device="cpu",
                masks=plan) as scorer:
        cols = scorer.score_chunk(corpus, np.arange(len(corpus)), per_batch)
    return cols["score"], (time.time() - t) / len(corpus)


def train_step_seconds(bundle, corpus, micro_batch: int, repeats: int = 3) -> float:
    """Seconds per sequence of a training step (forward, backward, AdamW) on length-sorted
    batches of the same sequences: what scoring is compared with."""
    import copy

    import torch

    from bioprune.engine.data.batching import length_sorted_batches, make_batch, per_sample_loss

    module = copy.deepcopy(bundle.module).train()
    opt = torch.optim.AdamW(module.parameters(), lr=1e-6)
    batches = length_sorted_batches(np.arange(len(corpus)), corpus.lengths, micro_batch)
    pick = batches[:: max(1, len(batches) // repeats)][:repeats]
    t, n = time.time(), 0
    for idx in pick:
        b = make_batch(corpus, idx, bundle, 0)
        loss = per_sample_loss(module(b.tokens), b.labels).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        n += len(idx)
    return (time.time() - t) / n


def run(args) -> dict:
    import torch

    from bioprune.engine.data.batching import MaskPlan
    from bioprune.engine.data.sampling import draw_subset
    from bioprune.engine.influence import damping as dmp
    from bioprune.engine.influence.diagnostics import spearman
    from bioprune.engine.models import build_model, load_weights, trainable_parameters
    from bioprune.launch.bench.scores import build_corpus, overlap, trained_model

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus, train = build_corpus(args.model, args.n, args.max_length, out)
    if args.checkpoint:
        bundle = build_model(args.model, "tiny")
        load_weights(bundle.module, args.checkpoint)
        bundle.module.eval()
    else:
        bundle = trained_model(args.model, train, args.train_steps, out)
    params, _ = dmp.covered_parameters(bundle.module, trainable_parameters(bundle.module))
    N, L = len(corpus), corpus.lengths
    subset = draw_subset(N, max(1, int(args.subset_fraction * N)), 0)
    log(f"N={N}, median length {int(np.median(L))}, D_sub {len(subset)}")

    refs, ref_info = {}, {}
    for rname in args.references:
        ref_plan = MaskPlan(seed=99, **REFERENCES[rname])
        refs[rname], ref_s = score_once(bundle, corpus, params, subset, ref_plan, args.micro_batch)
        ref_info[rname] = {"copies": ref_plan.copies, "ms_per_seq": 1e3 * ref_s,
                           "spearman_length": spearman(refs[rname], L)}
        log(f"reference {rname} ({ref_plan.copies} copies): {ref_s * 1e3:.1f} ms/seq")
    if len(refs) > 1:
        names = list(refs)
        ref_info["spearman_between_references"] = spearman(refs[names[0]], refs[names[1]])
    train_s = train_step_seconds(bundle, corpus, args.micro_batch)
    rows = {}
    for name in args.estimators:
        scores, secs = [], []
        spec = ESTIMATORS[name]
        for mseed in (1, 2):
            plan = MaskPlan(seed=mseed, **spec)
            s, t = score_once(bundle, corpus, params, subset, plan, args.micro_batch)
            scores.append(s)
            secs.append(t)
        a, b = scores
        rows[name] = {
            "copies": MaskPlan(**spec).copies,
            "estimator": spec.get("estimator", "mean"),
            **{f"spearman_vs_{r}": float(np.mean([spearman(s, v) for s in scores]))
               for r, v in refs.items()},
            "spearman_seeds": spearman(a, b),
            "topk10_overlap": overlap(a, b, "topk"), "cci10_overlap": overlap(a, b, "cci"),
            "spearman_length": float(np.mean([spearman(s, L) for s in scores])),
            "negative_share": float(np.mean([(s < 0).mean() for s in scores])),
            "score_ms_per_seq": 1e3 * float(np.mean(secs))}
        log(name, {k: round(v, 3) if isinstance(v, float) else v for k, v in rows[name].items()})
    base = rows.get("K1", {}).get("score_ms_per_seq")
    for r in rows.values():
        r["cost_vs_K1"] = r["score_ms_per_seq"] / base if base else None
        r["cost_vs_train_step"] = r["score_ms_per_seq"] / (1e3 * train_s)
    return {"model": args.model, "checkpoint": args.checkpoint, "n": N, "d_sub": len(subset),
            "median_length": float(np.median(L)), "references": ref_info,
            "train_step_ms_per_seq": 1e3 * train_s, "estimators": rows}


def table(res: dict) -> str:
    refs = [k for k in res["references"] if k in REFERENCES]
    lines = [f"{res['model']}, N = {res['n']} (median length {res['median_length']:.0f}), D_sub "
             f"{res['d_sub']}; references " + ", ".join(
                 f"{k} ({res['references'][k]['copies']} copies, ρ(score, length) "
                 f"{res['references'][k]['spearman_length']:+.2f})" for k in refs)
             + (f", ρ between them {res['references']['spearman_between_references']:.3f}"
                if "spearman_between_references" in res["references"] else "")
             + f"; training step {res['train_step_ms_per_seq']:.1f} ms/seq", "",
             "| estimator | copies | " + "".join(f"ρ vs {k} | " for k in refs)
             + "ρ across mask seeds | Top-I 10% overlap | CCI 10% overlap | ρ(score, length) | "
             "negative | score ms/seq | × K1 | × train step |",
             "|---|---|" + "---|" * len(refs) + "---|---|---|---|---|---|---|---|"]
    for name, r in res["estimators"].items():
        vs = "".join(f"{r[f'spearman_vs_{k}']:.3f} | " for k in refs)
        lines.append(f"| {name} ({r['estimator']}) | {r['copies']} | {vs}"
                     f"{r['spearman_seeds']:.3f} | {r['topk10_overlap']:.2f} | "
                     f"{r['cci10_overlap']:.2f} | {r['spearman_length']:+.2f} | "
                     f"{r['negative_share']:.0%} | "
                     f"{r['score_ms_per_seq']:.1f} | {r['cost_vs_K1'] or float('nan'):.2f} | "
                     f"{r['cost_vs_train_step']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    res = run(args)
    from bioprune.engine.io.atomic import write_json

    write_json(Path(args.out) / "results.json", res)
    print(table(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
