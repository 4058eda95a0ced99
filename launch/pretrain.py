"""Pretrain a fresh model from scratch on a coreset (DESIGN step 5), on DeepSpeed with ZeRO.

    deepspeed launch/pretrain.py --data a.fasta --indices runs/x/cci/coreset.npy --out runs/x/pt
    python launch/pretrain.py --data a.fasta --all --out runs/full        # the whole corpus

The paper's schedule by default: AdamW lr 1e-4, weight decay 0.01, linear warm-up for 2,000
steps then inverse-square-root decay, 10 epochs, micro-batch 16. A fixed held-out sample of the
corpus (the same for every coreset drawn with the same --seed, and never trained on) gives the
MLM loss and perplexity after each epoch (metrics.csv and TensorBoard). Checkpoints are
DeepSpeed's; rerunning with the same --out resumes after the last finished epoch. The final
weights are exported as a plain state dict (final/model.safetensors).
"""
from __future__ import annotations

import os
import sys


import argparse
import sys
import time

import numpy as np

from bioprune.engine.runtime import distributed, hashing
from bioprune.engine.io.atomic import save_npy
from bioprune.engine.cli import (HelpFormatter, add_data_args, add_deepspeed_args, add_model_args,
                                 fail, model_and_corpus, resolve, run_distributed)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_data_args(p)
    add_model_args(p)
    what = p.add_argument_group("training set").add_mutually_exclusive_group(required=True)
    what.add_argument("--indices", metavar="NPY",
                      help="corpus indices to train on: a coreset.npy, subset.npy or any int64 .npy")
    what.add_argument("--all", action="store_true", help="train on the whole corpus")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=10, help="passes over the training set")
    g.add_argument("--lr", type=float, default=1e-4, help="peak AdamW learning rate")
    g.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    g.add_argument("--warmup", type=int, default=2000,
                   help="linear warm-up steps, then inverse-square-root decay")
    g.add_argument("--micro-batch-size", type=int, default=16, help="sequences per step per rank")
    g.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    g.add_argument("--seed", type=int, default=0,
                   help="initialisation, data order, masks and the held-out sample")
    g.add_argument("--heldout-size", type=int, default=1000,
                   help="sequences of the corpus held out for the per-epoch MLM loss/perplexity "
                        "(removed from the training set); 0 disables")
    p.add_argument("--out", required=True, help="output directory")
    add_deepspeed_args(p)
    return p.parse_args(argv)


def heldout_indices(n: int, size: int, seed: int) -> np.ndarray:
    if size <= 0:
        return np.empty(0, dtype=np.int64)
    size = min(size, max(n // 10, 1))  # never hold out more than a tenth of the corpus
    keys = hashing.hash_keys(seed, np.arange(n), hashing.HELDOUT)
    return np.sort(np.argsort(keys, kind="stable")[:size]).astype(np.int64)


def main(argv=None) -> int:
    return run_distributed(run, parse_args(argv))


def run(args, rank: int, world: int) -> int:
    from bioprune.engine.io.manifest import Manifest
    from bioprune.engine.training.loop import TrainSettings, export_weights, train

    t0 = time.time()
    out = resolve(args.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    distributed.barrier()
    bundle, corpus, cache, max_res = model_and_corpus(args, out)
    n = len(corpus)
    if args.all:
        train_idx = np.arange(n, dtype=np.int64)
    else:
        try:
            train_idx = np.load(args.indices)
        except (OSError, ValueError) as e:
            fail(f"--indices {args.indices}: cannot read ({e})")
        if train_idx.ndim != 1 or not np.issubdtype(train_idx.dtype, np.integer):
            fail(f"--indices {args.indices}: expected a 1-D integer array, got {train_idx.dtype} "
                 f"{train_idx.shape}")
        bad = train_idx[(train_idx < 0) | (train_idx >= n)]
        if len(bad):
            fail(f"--indices {args.indices}: {len(bad)} indices outside the corpus of {n} "
                 f"(first: {bad[:5].tolist()}); was it made from the same --data?")
        if len(np.unique(train_idx)) != len(train_idx):
            fail(f"--indices {args.indices}: repeated corpus indices")
    heldout = heldout_indices(n, args.heldout_size, args.seed)
    overlap = np.isin(train_idx, heldout)
    train_idx = np.sort(train_idx[~overlap]).astype(np.int64)
    if len(train_idx) == 0:
        fail("nothing left to train on after removing the held-out sample; lower --heldout-size")
    settings = TrainSettings(
        lr=args.lr, weight_decay=args.weight_decay, warmup_steps=args.warmup,
        schedule="inverse_sqrt", epochs=args.epochs, micro_batch_size=args.micro_batch_size,
        seed=args.seed, max_residues=max_res, zero_stage=args.zero_stage,
        ds_config=args.deepspeed_config, grad_accum=args.grad_accum)
    manifest = None
    if rank == 0:
        save_npy(out / "heldout.npy", heldout)
        manifest = Manifest(out / "manifest.json", "pretrain", vars(args), world)
        manifest.count(corpus=n, train=len(train_idx), heldout=len(heldout),
                       removed_for_heldout=int(overlap.sum()),
                       cropped=int((corpus.lengths[train_idx] > max_res).sum()))
        manifest.save()
    result = train(bundle, corpus, train_idx, settings, checkpoint_dir=out / "checkpoints",
                   heldout=heldout, metrics_csv=out / "metrics.csv",
                   tensorboard_dir=out / "tensorboard", progress_desc="pretrain")
    export_weights(result["engine"], bundle, out / "final")
    if rank == 0:
        manifest.set("ds_config", result["engine"].bioprune_config_source)
        manifest.set("metrics", result["metrics"])
        manifest.count(steps=result["steps"], resumed_from_epoch=result["start_epoch"])
        manifest.timing("train", result["seconds"], result["sequences"])
        manifest.timing("total", time.time() - t0)
        manifest.save("finished")
        last = result["metrics"][-1] if result["metrics"] else {}
        print(f"pretrained {len(train_idx)} sequences x {args.epochs} epochs; "
              f"held-out loss {last.get('heldout_loss', float('nan')):.4f} "
              f"ppl {last.get('heldout_ppl', float('nan')):.3f} -> {out / 'final'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
