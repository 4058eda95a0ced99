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

import argparse
import sys

from bioprune.engine.cli import (HelpFormatter, add_data_args, add_deepspeed_args, add_model_args,
                                 add_report_arg, add_run_args, main_of, model_inputs,
                                 settings_from_args)
from bioprune.engine.influence.pipeline import CORRUPTIONS, ScoreSettings, run_scoring
from bioprune.engine.influence.damping import DEFAULT_ALPHA, DEFAULT_EXCLUDE_BELOW


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_data_args(p)
    add_model_args(p)
    add_run_args(p)
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
    g.add_argument("--finetune-warmup", type=int, default=50,
                   help="adaptation linear warm-up steps")
    g.add_argument("--finetune-global-batch", type=int, default=None,
                   help="sequences per adaptation step over all ranks (a multiple of "
                        "micro-batch x ranks; the rest is gradient accumulation). Fixing it makes "
                        "the adapted model, so the scores, the same on any number of ranks. "
                        "Default: micro-batch x ranks")
    g.add_argument("--keep-adapt-checkpoints", action="store_true",
                   help="keep RUN/adapt_checkpoints/ (the adaptation's DeepSpeed checkpoints, "
                        "mostly optimizer state) after the adapted model is exported; by default "
                        "they are deleted then, as a rerun resumes from RUN/adapted/")
    g.add_argument("--params", default=None, metavar="REGEX",
                   help="cover only parameters whose name matches this regex (default: every "
                        "trainable parameter; tied parameters count once)")
    d = g.add_mutually_exclusive_group()
    d.add_argument("--damping-alpha", type=float, default=DEFAULT_ALPHA, metavar="ALPHA",
                   help="relative damping (the default): λ = ALPHA · mean(F) over the covered "
                        "parameters")
    d.add_argument("--damping", type=float, default=None, metavar="LAMBDA",
                   help="absolute damping λ instead (the public reference code: 1e-8)")
    g.add_argument("--exclude-below", type=float, default=DEFAULT_EXCLUDE_BELOW, metavar="TAU",
                   help="coordinates with Fisher F <= TAU · mean(F) (not estimated by D_sub: "
                        "positions beyond its lengths, absent residues) get weight 0 and are "
                        "counted in the manifest; 0 excludes exact zeros only")
    m = g.add_mutually_exclusive_group()
    m.add_argument("--mask-cover", type=int, default=None, metavar="C",
                   help="per-sample loss = mean MLM loss over C mask covers, each a random "
                        "partition of the residues into P = 1/R masks of --mask-rate R (costs "
                        "P·C passes; default: 1 cover of 4 masks of 25%%, as stable as 28 "
                        "masks of 15%%, see README 'Which score estimator')")
    m.add_argument("--mask-draws", type=int, default=None, metavar="K",
                   help="per-sample loss = mean MLM loss over K random 15%% masks instead "
                        "(costs K passes; K = 1 is the single mask of the paper's code)")
    m.add_argument("--unmasked-loss", action="store_true",
                   help="per-sample loss = cross-entropy of every residue given the whole, "
                        "unmasked sequence (one deterministic pass, no mask noise; the "
                        "wild-type marginal of variant scoring)")
    g.add_argument("--mask-rate", type=float, default=None, metavar="R",
                   help="the share of residues each mask hides: with --mask-draws default 0.15 "
                        "(the MLM rate); with covers default 0.25 (4 masks a cover; 0.15 gives "
                        "the 7 masks of earlier versions)")
    g.add_argument("--mask-corruption", choices=CORRUPTIONS, default="mask",
                   help="what a masked residue becomes: mask = the mask token (default; removes "
                        "the noise of random and kept residues), bert = training's 80%% mask "
                        "token / 10%% random residue / 10%% kept")
    g.add_argument("--mask-estimator", choices=("mean", "cross"), default="mean",
                   help="mean: the score is the weighted squared norm of the mean of the K "
                        "copies' gradients (noise of one mask shrinks only as 1/K); cross: the "
                        "unbiased cross-term over pairs of copies, (|Σg_k|² − Σ|g_k|²)/(K(K−1)), "
                        "an estimate of |E_m g|² without that noise (needs K >= 2; same passes, "
                        "one more kernel reduction per layer)")
    g.add_argument("--mask-seed", type=int, default=None,
                   help="seed of the scoring masks, which are functions of (mask seed, corpus "
                        "index, k); default: --seed")
    g.add_argument("--preset", choices=("reference",), default=None,
                   help="reference: the public reference code's recipe, to compare with the "
                        "paper — only the LM head's dense weight (lm_head.dense.weight), "
                        "absolute λ = 1e-8, one random mask, nothing excluded (overrides "
                        "--params/--damping*/--mask-*/--exclude-below)")
    g.add_argument("--seed", type=int, default=0,
                   help="fixes D_sub, crops and masks (as functions of seed and corpus index)")
    g.add_argument("--micro-batch-size", type=int, default=16,
                   help="sequences per batch per rank; the Fisher and scoring passes take "
                        "micro-batch / K sequences of K masked copies each (memory as for "
                        "micro-batch single-mask rows)")
    g.add_argument("--chunk-size", type=int, default=4096,
                   help="corpus indices per score part (the unit of resume and of work sharing)")
    g.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="autocast dtype of the Fisher/scoring forward passes (bf16 on GPUs only)")
    g.add_argument("--backend", choices=("auto", "triton", "torch"), default="auto",
                   help="per-sample reduction kernels: Triton on CUDA, PyTorch elsewhere "
                        "by default")
    add_report_arg(p, "the adaptation fine-tune (stage adapt)")
    p.add_argument("--out", required=True, help="the run directory")
    add_deepspeed_args(p)
    args = p.parse_args(argv)
    if args.max_length is not None and args.max_length < 1:
        p.error("--max-length must be >= 1")
    if args.micro_batch_size < 1 or args.chunk_size < 1:
        p.error("--micro-batch-size and --chunk-size must be >= 1")
    return args


def run(args) -> int:
    run_scoring(settings_from_args(ScoreSettings, args, **vars(model_inputs(args))))
    return 0


main = main_of(parse_args, run)

if __name__ == "__main__":
    sys.exit(main())
