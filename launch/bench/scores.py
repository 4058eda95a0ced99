"""How much a score ranking means: mask-seed stability, cost, length and positional artefacts.

    python launch/bench/scores.py --model rnafm --n 1000 --out runs/bench_scores/rna
    python launch/bench/scores.py --model esmc --n 600 --out runs/bench_scores/protein

On N sequences drawn (by hash) from the shared corpus (RNA: the six RNA files; protein: NetSurfP),
with a tiny model first trained briefly by MLM (``--train-steps``; a stand-in for a pretrained
checkpoint, cached in OUT), scored as the real pipeline does (w/o ft: the given weights):

- for every mask plan (K random masks, or C mask covers of 7 masks) and two mask seeds, the
  Fisher over D_sub (``fisher_pass``, the production pass: its time per sequence gives the cost
  ratio against K = 1) and every sequence's squared per-sample gradient (materialised once per
  plan and seed), from which the scores of every damping setting are read off exactly;
- per (plan, damping): Spearman between the two mask seeds' scores, Spearman(score, length),
  the score share of each parameter group (positional embeddings reported), and the overlap of
  the Top-I and CCI 10% coresets between the seeds;
- two D_sub: a random one (``--subset-fraction``), and a "short" one of sequences no longer than
  ``--short-max`` residues, so that the corpus has positions D_sub never reaches.

Writes OUT/results.json and prints a table (markdown).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

PLANS = {"K1": dict(draws=1), "K4": dict(draws=4), "K16": dict(draws=16), "K32": dict(draws=32),
         "C1": dict(covers=1), "C2": dict(covers=2)}
# name -> Damping fields; "old" is the original default (absolute 1e-8, nothing excluded)
DAMPINGS = {
    "abs1e-8,old": dict(mode="absolute", value=1e-8, exclude_below=None),
    "abs1e-8,excl": dict(mode="absolute", value=1e-8, exclude_below=1e-12),
    "rel1e-3": dict(mode="relative", alpha=1e-3, exclude_below=1e-12),
    "rel1e-2": dict(mode="relative", alpha=1e-2, exclude_below=1e-12),
    "rel3e-2": dict(mode="relative", alpha=3e-2, exclude_below=1e-12),
    "rel0.1": dict(mode="relative", alpha=0.1, exclude_below=1e-12),
    "rel1": dict(mode="relative", alpha=1.0, exclude_below=1e-12),
}
FILES = {"rnafm": ["rna/archiveII.csv", "rna/bprna_nf15.csv", "rna/rnacentral_sample.fasta",
                   "rna/rfam_RF00001.fasta", "rna/rfam_RF00005.fasta", "rna/rfam_RF00010.fasta"],
         "esmc": ["protein/netsurfp_ss3.csv"]}


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def build_corpus(model: str, n: int, max_len: int, out: Path):
    from bioprune.engine.data.corpus import load_corpus
    from bioprune.engine.data.paths import data_dir
    from bioprune.engine.data.sampling import draw_subset
    from bioprune.engine.data.sequence_list import SequenceList

    molecule = "rna" if model == "rnafm" else "protein"
    full = load_corpus([str(data_dir() / f) for f in FILES[model]], molecule, out / "corpus")
    pick = draw_subset(len(full), n, 12345)
    seqs = [full.sequence(int(i))[:max_len] for i in pick]   # a prefix: the bench's own crop
    train_pick = draw_subset(len(full), min(len(full), 20 * n), 777)
    train = SequenceList([full.sequence(int(i))[:max_len] for i in train_pick], molecule)
    return SequenceList(seqs, molecule), train


def trained_model(model: str, train, steps: int, out: Path, lr: float = 1e-3):
    import torch

    from bioprune.engine.data.batching import make_batch, per_sample_loss
    from bioprune.engine.models import build_model, load_weights

    torch.manual_seed(0)
    bundle = build_model(model, "tiny")
    path = out / f"model_{steps}.pt"
    if path.exists():
        load_weights(bundle.module, str(path))
        return bundle
    opt = torch.optim.AdamW(bundle.module.parameters(), lr=lr, weight_decay=0.01)
    rng = np.random.default_rng(0)
    bundle.module.train()
    order = np.argsort(train.lengths, kind="stable")   # batches of similar length
    for step in range(steps):
        s = rng.integers(0, max(1, len(order) - 16))
        idx = order[s:s + 16]
        b = make_batch(train, idx, bundle, 0, mask_seed=1000 + step)
        loss = per_sample_loss(bundle.module(b.tokens), b.labels).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            log(f"train step {step} loss {loss.item():.3f}")
    bundle.module.eval()
    torch.save(bundle.module.state_dict(), path)
    return bundle


def materialised_scores(bundle, corpus, params, groups, weight_sets, plan, micro_batch: int):
    """(N, G, C) per-sample score parts by group for every weight set (C of them), from the
    squared per-sample gradients (PER_SAMPLE mode: exact, no fused kernels)."""
    import torch

    from bioprune.engine.data.batching import length_sorted_batches, make_batch
    from bioprune.engine.influence.diagnostics import GROUPS
    from bioprune.engine.influence.grad_sample import Mode, SquaredGradCollector
    from bioprune.engine.influence.passes import _backward_pass

    N, C = len(corpus), len(weight_sets)
    gi = {g: i for i, g in enumerate(GROUPS)}
    W = {n: torch.stack([ws[n].flatten() for ws in weight_sets], 1).double() for n, _ in params}
    out = np.zeros((N, len(GROUPS), C))
    order = length_sorted_batches(np.arange(N), corpus.lengths, N)[0]
    batches, cur = [], []
    for i in order:   # at most micro_batch rows of the longest length 256 (token budget)
        rows = (len(cur) + 1) * plan.copies * max(256, int(corpus.lengths[i]))
        if cur and rows > micro_batch * 256:
            batches.append(np.array(cur))
            cur = []
        cur.append(i)
    batches.append(np.array(cur))
    with SquaredGradCollector(bundle, params, Mode.PER_SAMPLE) as col:
        for idx in batches:
            b = make_batch(corpus, idx, bundle, 0, masks=plan)
            _backward_pass(bundle, b, col)
            for n, sq in col.squared.items():
                part = sq.flatten(1).double() @ W[n]        # (B, C)
                out[idx, gi[groups[n]], :] += part.numpy()
            col.squared.clear()
    return out


def overlap(a: np.ndarray, b: np.ndarray, strategy: str, frac: float = 0.1) -> float:
    from bioprune.engine.selection.exact import select

    n = len(a)
    k = max(1, int(frac * n))
    idx = np.arange(n, dtype=np.int64)
    sa = select(idx, a, strategy, k, seed=0).indices
    sb = select(idx, b, strategy, k, seed=0).indices
    return len(np.intersect1d(sa, sb)) / k


def run(args) -> dict:
    import torch

    from bioprune.engine.data.batching import MaskPlan
    from bioprune.engine.data.sampling import draw_subset
    from bioprune.engine.influence import damping as dmp
    from bioprune.engine.influence.diagnostics import GROUPS, parameter_groups, spearman
    from bioprune.engine.influence.passes import fisher_pass
    from bioprune.engine.models import trainable_parameters

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus, train = build_corpus(args.model, args.n, args.max_length, out)
    bundle = trained_model(args.model, train, args.train_steps, out)
    params, zero = dmp.covered_parameters(bundle.module, trainable_parameters(bundle.module))
    groups = parameter_groups(bundle.module, params)
    N = len(corpus)
    L = corpus.lengths
    subsets = {"random": draw_subset(N, max(1, int(args.subset_fraction * N)), 0)}
    short = np.flatnonzero(L <= args.short_max)
    n_short = max(1, int(2 * args.subset_fraction * N))
    subsets["short"] = short[np.isin(short, draw_subset(N, n_short, 0))]
    log(f"N={N} lengths median {int(np.median(L))} max {L.max()}; "
        f"D_sub random {len(subsets['random'])} "
        f"(max len {L[subsets['random']].max()}), short {len(subsets['short'])} (max len "
        f"{L[subsets['short']].max()}); covered params {sum(p.numel() for _, p in params)}, "
        f"zero-gradient {zero}")
    results = {"model": args.model, "n": N, "median_length": float(np.median(L)),
               "max_length": int(L.max()), "plans": {},
               "subsets": {k: len(v) for k, v in subsets.items()},
               "dsub_max_length": {k: int(L[v].max()) for k, v in subsets.items()}}
    cache = out / "cache"
    cache.mkdir(exist_ok=True)
    base_cost = None
    for pname in args.plans:
        plan_kw = PLANS[pname]
        parts_by_seed, cost = [], []
        for mseed in (1, 2):
            plan = MaskPlan(seed=mseed, **plan_kw)
            f_cache = cache / f"{pname}_s{mseed}.npz"
            if f_cache.exists():
                z = np.load(f_cache, allow_pickle=True)
                parts_by_seed.append(z["parts"])
                cost.append(float(z["cost"]))
                continue
            t = time.time()
            fishers = {}
            for sname, sub in subsets.items():
                t1 = time.time()
                micro = max(1, args.micro_batch // plan.copies)
                fishers[sname] = fisher_pass(bundle, corpus, sub, params, seed=0,
                                             max_residues=10**6, micro_batch_size=micro,
                                             device="cpu", masks=plan)
                if sname == "random":
                    cost.append((time.time() - t1) / len(sub))
            weight_sets, names = [], []
            for sname, f in fishers.items():
                for dname, kw in DAMPINGS.items():
                    weight_sets.append(dmp.influence_weights(f, dmp.Damping(**kw), "cpu"))
                    names.append((sname, dname))
            parts = materialised_scores(bundle, corpus, params, groups, weight_sets, plan,
                                        args.micro_batch)
            parts_by_seed.append(parts)
            np.savez(f_cache, parts=parts, cost=cost[-1])
            log(f"{pname} seed {mseed}: {time.time() - t:.0f} s")
        if base_cost is None and pname == "K1":
            base_cost = float(np.mean(cost))
        res = {"cost_per_seq_s": float(np.mean(cost)), "copies": MaskPlan(**plan_kw).copies,
               "settings": {}}
        c = 0
        for sname in subsets:
            for dname in DAMPINGS:
                s1 = parts_by_seed[0][:, :, c].sum(1)
                s2 = parts_by_seed[1][:, :, c].sum(1)
                mass = parts_by_seed[0][:, :, c].sum(0)
                contrib = {g: float(m / mass.sum()) for g, m in zip(GROUPS, mass)}
                res["settings"][f"{sname}|{dname}"] = {
                    "seed_spearman": spearman(s1, s2),
                    "length_spearman": spearman(s1, L),
                    "positional_share": contrib["positional_embeddings"],
                    "contributions": contrib,
                    "topi_overlap": overlap(s1, s2, "topk"),
                    "cci_overlap": overlap(s1, s2, "cci"),
                }
                c += 1
        results["plans"][pname] = res
        log(f"{pname}: done")
    for pname, res in results["plans"].items():
        res["cost_ratio"] = res["cost_per_seq_s"] / base_cost if base_cost else None
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(table(results))
    return results


def table(results: dict) -> str:
    lines = [f"### {results['model']} tiny, N = {results['n']} (median length "
             f"{results['median_length']:.0f}, max {results['max_length']}); D_sub: "
             + ", ".join(f"{k} {v} (max len {results['dsub_max_length'][k]})"
                         for k, v in results["subsets"].items()),
             "",
             "| masks | cost × | D_sub | damping | seed ρ | ρ(score, length) | positional share "
             "| Top-I 10% overlap | CCI 10% overlap |",
             "|---|---|---|---|---|---|---|---|---|"]
    for pname, res in results["plans"].items():
        for key, r in res["settings"].items():
            sname, dname = key.split("|")
            cr = res.get("cost_ratio")
            lines.append(f"| {pname} | {cr:.1f} | {sname} | {dname} | {r['seed_spearman']:.3f} | "
                         f"{r['length_spearman']:+.3f} | {r['positional_share']:.3f} | "
                         f"{r['topi_overlap']:.2f} | {r['cci_overlap']:.2f} |"
                         if cr is not None else f"| {pname} | ? | {sname} | {dname} | ...")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("rnafm", "esmc"), default="rnafm")
    p.add_argument("--n", type=int, default=1000, help="sequences scored")
    p.add_argument("--max-length", type=int, default=512, help="residues kept (a prefix)")
    p.add_argument("--subset-fraction", type=float, default=0.2, help="random D_sub / N")
    p.add_argument("--short-max", type=int, default=150,
                   help="the 'short' D_sub holds only sequences of at most this many residues")
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--plans", nargs="+", default=list(PLANS), choices=list(PLANS))
    p.add_argument("--micro-batch", type=int, default=32,
                   help="rows (sequences x copies) per batch")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/bench_scores")
    p.add_argument("--table-only", action="store_true", help="print the table of OUT/results.json")
    args = p.parse_args(argv)
    if args.table_only:
        print(table(json.loads((Path(args.out) / "results.json").read_text())))
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
