"""Score every sequence of a corpus by subset-based self-influence (DESIGN steps 1-3).

    deepspeed launch/score.py --data a.fasta b.csv --model rnafm --out runs/x      # a cluster
    python launch/score.py --data a.fasta --model rnafm --out runs/x               # one process

Steps: draw D_sub → adapt the model on it for --finetune-epochs (DeepSpeed, ZeRO) → diagonal
empirical Fisher over D_sub (summed across ranks) → I(z) = Σ_j g_zj² / (F_j + λ) for every
sequence, data-parallel in fixed chunks of corpus indices → the run directory of DESIGN.md.

Rerunning with the same --out resumes: the adapted model, the Fisher and every finished score
part are kept; only missing parts are scored.
"""
from __future__ import annotations

import os
import sys


import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bioprune.engine.runtime import distributed
from bioprune.engine.io.atomic import save_npy, write_json
from bioprune.engine.cli import (HelpFormatter, add_data_args, add_deepspeed_args, add_model_args,
                                 fail, model_and_corpus, resolve, run_distributed)

# settings that change results: a rerun into the same --out must agree on them
RESULT_KEYS = ("data", "column", "id_column", "model", "model_size", "checkpoint", "max_length",
               "subset_size", "subset_fraction", "finetune_epochs", "finetune_lr",
               "finetune_warmup", "finetune_global_batch", "params", "damping", "seed", "chunk_size", "precision")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_data_args(p)
    add_model_args(p)
    g = p.add_argument_group("influence")
    s = g.add_mutually_exclusive_group()
    s.add_argument("--subset-size", type=int, default=None,
                   help="M, the size of D_sub (paper: 200000); default: the whole corpus")
    s.add_argument("--subset-fraction", type=float, default=None,
                   help="D_sub as a fraction of the corpus instead of --subset-size")
    g.add_argument("--finetune-epochs", type=int, default=1,
                   help="epochs of MLM adaptation on D_sub before the Fisher; 0 = the paper's "
                        "'w/o ft' ablation (score the given weights as they are)")
    g.add_argument("--finetune-lr", type=float, default=1e-5, help="adaptation AdamW learning rate")
    g.add_argument("--finetune-warmup", type=int, default=50, help="adaptation linear warm-up steps")
    g.add_argument("--finetune-global-batch", type=int, default=None,
                   help="sequences per adaptation step over all ranks (a multiple of "
                        "micro-batch x ranks; the rest is gradient accumulation). Fixing it makes "
                        "the adapted model, so the scores, the same on any number of ranks. "
                        "Default: micro-batch x ranks")
    g.add_argument("--params", default=None, metavar="REGEX",
                   help="cover only parameters whose name matches this regex (default: every "
                        "trainable parameter; tied parameters count once)")
    g.add_argument("--damping", type=float, default=1e-8, help="λ, absolute, added to the Fisher")
    g.add_argument("--seed", type=int, default=0,
                   help="fixes D_sub, crops and masks (as functions of seed and corpus index)")
    g.add_argument("--micro-batch-size", type=int, default=16, help="sequences per batch per rank")
    g.add_argument("--chunk-size", type=int, default=4096,
                   help="corpus indices per score part (the unit of resume and of work sharing)")
    g.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="autocast dtype of the Fisher/scoring forward passes (bf16 on GPUs only)")
    g.add_argument("--backend", choices=("auto", "triton", "torch"), default="auto",
                   help="per-sample reduction kernels: Triton on CUDA, PyTorch elsewhere by default")
    p.add_argument("--out", required=True, help="the run directory")
    add_deepspeed_args(p)
    args = p.parse_args(argv)
    if args.max_length is not None and args.max_length < 1:
        p.error("--max-length must be >= 1")
    if args.micro_batch_size < 1 or args.chunk_size < 1:
        p.error("--micro-batch-size and --chunk-size must be >= 1")
    return args


def check_same_run(out: Path, args) -> None:
    import json

    cfg_path = out / "run_config.json"
    if not cfg_path.exists():
        return
    old = json.loads(cfg_path.read_text())
    diff = [f"{k}: {old.get(k)!r} then, {getattr(args, k)!r} now" for k in RESULT_KEYS
            if old.get(k) != _jsonable(getattr(args, k))]
    if diff:
        fail(f"{out} holds a run made with other settings ({'; '.join(diff)}); "
             "use a new --out, or delete it to start over")


def _jsonable(v):
    return [str(x) for x in v] if isinstance(v, list) else v


def main(argv=None) -> int:
    return run_distributed(run, parse_args(argv))


def run(args, rank: int, world: int) -> int:
    from tqdm import tqdm

    from bioprune.engine.io import scores as scores_io
    from bioprune.engine.data.batching import length_sorted_batches
    from bioprune.engine.influence.passes import Scorer, fisher_pass, influence_weights
    from bioprune.engine.io.manifest import Manifest
    from bioprune.engine.models import load_saved_model, save_model, trainable_parameters
    from bioprune.engine.data.sampling import draw_subset, subset_size

    t_start = time.time()
    out = resolve(args.out)
    args.data = [str(resolve(d)) if "::" not in d else d for d in args.data]
    check_same_run(out, args)  # on every rank, so all of them stop together
    distributed.barrier()
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "run_config.json", {k: _jsonable(getattr(args, k)) for k in RESULT_KEYS})
    distributed.barrier()
    device = distributed.device()
    manifest = Manifest(out / "manifest.json", "score", vars(args), world) if rank == 0 else None

    # ---- corpus ----------------------------------------------------------------------------
    t = time.time()
    bundle, corpus, cache, max_res = model_and_corpus(args, out)
    n = len(corpus)
    if manifest:
        manifest.set("corpus", {"paths": args.data, "molecule": bundle.molecule,
                                "column": args.column, "id_column": args.id_column,
                                "cache_dir": str(cache), "stats": corpus.stats})
        manifest.count(sequences=n, cropped=int((corpus.lengths > max_res).sum()),
                       max_residues=max_res)
        manifest.timing("corpus", time.time() - t, n)
        manifest.save()

    # ---- D_sub -------------------------------------------------------------------------------
    try:
        m = subset_size(n, args.subset_size, args.subset_fraction)
    except ValueError as e:
        fail(str(e))
    subset = draw_subset(n, m, args.seed)
    if rank == 0:
        save_npy(out / "subset.npy", subset)
        manifest.count(subset=m)

    # ---- adapt (Assumption 1) ----------------------------------------------------------------
    adapted_dir = out / "adapted"
    if not (adapted_dir / "model.safetensors").exists():
        t = time.time()
        if args.finetune_epochs > 0:
            from bioprune.engine.training.loop import TrainSettings, export_weights, train

            per_step = args.micro_batch_size * world
            glob = args.finetune_global_batch or per_step
            if glob % per_step:
                fail(f"--finetune-global-batch {glob} is not a multiple of micro-batch x ranks "
                     f"= {per_step}")
            settings = TrainSettings(
                lr=args.finetune_lr, weight_decay=0.01, warmup_steps=args.finetune_warmup,
                schedule="constant", epochs=args.finetune_epochs,
                micro_batch_size=args.micro_batch_size, seed=args.seed, max_residues=max_res,
                zero_stage=args.zero_stage, ds_config=args.deepspeed_config,
                grad_accum=glob // per_step)
            result = train(bundle, corpus, subset, settings, checkpoint_dir=out / "adapt_checkpoints",
                           progress_desc="adapt")
            export_weights(result["engine"], bundle, adapted_dir)
            if manifest:
                manifest.set("adapt", {"steps": result["steps"], "metrics": result["metrics"],
                                       "ds_config": result["engine"].bioprune_config_source})
                manifest.timing("adapt", time.time() - t, result["sequences"])
            del result
        elif rank == 0:
            save_model(bundle, adapted_dir)  # "w/o ft": the scored model is the given one
        distributed.barrier()
    bundle = load_saved_model(adapted_dir)
    bundle.module.to(device)
    params = trainable_parameters(bundle.module, args.params)
    if not params:
        fail(f"--params {args.params!r} matches no trainable parameter")
    n_covered = sum(p.numel() for _, p in params)
    if manifest:
        manifest.set("parameters", {"pattern": args.params, "tensors": len(params),
                                    "covered": n_covered,
                                    "total": sum(p.numel() for _, p in trainable_parameters(bundle.module)),
                                    "names": [nm for nm, _ in params]})
        manifest.set("damping", args.damping)
        manifest.save()
    backend = None if args.backend == "auto" else args.backend
    autocast = torch.bfloat16 if args.precision == "bf16" else None

    # ---- Fisher over D_sub -------------------------------------------------------------------
    fisher_path = out / "fisher.safetensors"
    from safetensors.torch import load_file, save_file

    if not fisher_path.exists():
        t = time.time()
        bar = tqdm(total=len(subset[rank::world]), desc="fisher", unit="seq", disable=rank != 0,
                   dynamic_ncols=True)
        fisher = fisher_pass(bundle, corpus, subset[rank::world], params, seed=args.seed,
                             max_residues=max_res, micro_batch_size=args.micro_batch_size,
                             device=device, backend=backend, autocast_dtype=autocast, progress=bar)
        bar.close()
        if rank == 0:
            from bioprune.engine.io.atomic import atomic_path

            with atomic_path(fisher_path) as tmp:
                save_file({k: v.cpu().contiguous() for k, v in fisher.items()}, str(tmp),
                          metadata={"subset_size": str(m), "seed": str(args.seed)})
            nonzero = int(sum((f != 0).sum().item() for f in fisher.values()))
            manifest.count(fisher_nonzero=nonzero)
            manifest.timing("fisher", time.time() - t, m)
            manifest.save()
        distributed.barrier()
    fisher = load_file(str(fisher_path))
    missing = [nm for nm, _ in params if nm not in fisher]
    if missing:
        fail(f"{fisher_path} lacks {missing[:3]}: it was made with other --params; delete it")
    weights = influence_weights({nm: fisher[nm] for nm, _ in params}, args.damping, device)

    # ---- score every sequence, data-parallel in fixed chunks ----------------------------------
    scores_dir = out / "scores"
    scores_dir.mkdir(parents=True, exist_ok=True)
    n_chunks = math.ceil(n / args.chunk_size)
    done = scores_io.finished_chunks(scores_dir)
    todo = [c for c in range(n_chunks) if c % world == rank and c not in done]
    t = time.time()
    n_mine = sum(min(n, (c + 1) * args.chunk_size) - c * args.chunk_size for c in todo)
    bar = tqdm(total=n_mine, desc="score", unit="seq", disable=rank != 0, dynamic_ncols=True)
    with Scorer(bundle, params, weights, seed=args.seed, max_residues=max_res, device=device,
                backend=backend, autocast_dtype=autocast) as scorer:
        for c in todo:
            idx = np.arange(c * args.chunk_size, min(n, (c + 1) * args.chunk_size), dtype=np.int64)
            cols = {"index": [], "score": [], "length": [], "loss": []}
            for b in length_sorted_batches(idx, corpus.lengths, args.micro_batch_size):
                r = scorer.score_indices(corpus, b)
                for k in cols:
                    cols[k].append(r[k])
                bar.update(len(b))
            cols = {k: np.concatenate(v) for k, v in cols.items()}
            order = np.argsort(cols["index"], kind="stable")
            scores_io.write_part(scores_dir, c, **{k: v[order] for k, v in cols.items()})
    bar.close()
    elapsed = torch.tensor([time.time() - t, float(n_mine)], dtype=torch.float64, device=device)
    if world > 1:
        import torch.distributed as dist

        tot = elapsed[1:].clone()
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # the slowest rank sets the wall time
        dist.all_reduce(tot)
        elapsed[1] = tot[0]
    elapsed = elapsed.cpu()
    distributed.barrier()
    if rank == 0:
        finished = scores_io.finished_chunks(scores_dir)
        lost = sorted(set(range(n_chunks)) - finished)
        if lost:
            fail(f"score parts missing for chunks {lost[:10]}; rerun with the same --out")
        rows = sum(scores_io.part_rows(scores_io.part_path(scores_dir, c)) for c in range(n_chunks))
        if rows != n:
            fail(f"score parts hold {rows} rows for a corpus of {n}: delete {scores_dir} and rerun")
        scores_io.write_success(scores_dir, rows)
        manifest.count(scored=rows, resumed_chunks=len(done), scored_this_run=int(elapsed[1].item()))
        manifest.timing("score", float(elapsed[0].item()), int(elapsed[1].item()))
        manifest.timing("total", time.time() - t_start)
        manifest.save("finished")
        print(f"scored {rows} sequences ({len(done)} of {n_chunks} parts resumed) -> {scores_dir}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
