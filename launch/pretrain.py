"""Pretrain a fresh model from scratch on a coreset (DESIGN step 5), on DeepSpeed with ZeRO.

    deepspeed launch/pretrain.py --data a.fasta --indices runs/x/cci/coreset.npy --out runs/x/pt
    python launch/pretrain.py --data a.fasta --all --out runs/full        # the whole corpus

The paper's schedule by default: AdamW lr 1e-4, weight decay 0.01, linear warm-up for 2,000
steps then inverse-square-root decay, 10 epochs, micro-batch 16. A fixed held-out sample of the
corpus (the same for every coreset drawn with the same --seed, and never trained on) gives the
MLM loss and perplexity after each epoch (metrics.csv and TensorBoard). Checkpoints are
DeepSpeed's; rerunning with the same --out resumes from the last checkpoint (an epoch's end, or
where an earlier --steps stopped). --steps N trains for exactly N optimizer steps whatever the
coreset size (compute-matched comparisons); rerunning with a larger --steps extends the run to the
same steps, data order and weights as an unbroken run of that length. The final
weights are exported as a plain state dict (final/model.safetensors).
"""
from __future__ import annotations

import argparse
import sys

from bioprune.engine.cli import (HelpFormatter, add_data_args, add_deepspeed_args, add_model_args,
                                 add_report_arg, add_run_args, main_of, model_inputs,
                                 settings_from_args)
from bioprune.engine.training.pipeline import PretrainSettings, run_pretraining


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_data_args(p)
    add_model_args(p)
    add_run_args(p)
    what = p.add_argument_group("training set").add_mutually_exclusive_group(required=True)
    what.add_argument("--indices", metavar="FILE",
                      help="what to train on: corpus indices (a coreset.npy, subset.npy or any "
                           "int64 .npy), or record ids, one per line (a text file; the first "
                           "tab-separated column is read, '#' lines skipped; from a selection: "
                           "cut -f2 coreset.tsv | tail -n +2 > ids.txt). Ids survive a corpus "
                           "that was reordered or re-exported; indices do not")
    what.add_argument("--all", action="store_true", help="train on the whole corpus")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=10, help="passes over the training set")
    g.add_argument("--steps", type=int, default=None,
                   help="train for exactly this many optimizer steps instead of --epochs (a "
                        "small training set repeats): compute-matched comparisons of coresets")
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
    c = p.add_argument_group("checkpoints (resume, preemption)")
    c.add_argument("--save-steps", type=int, default=None, metavar="N",
                   help="also checkpoint every N optimizer steps (default: at each epoch's end "
                        "only); a rerun resumes from the last one on exactly the batches an "
                        "unbroken run takes. SIGTERM/SIGHUP (Slurm's --signal, a time limit) "
                        "always checkpoints at the current step, then exits 143")
    c.add_argument("--save-total-limit", type=int, default=None, metavar="K",
                   help="keep only the K most recent checkpoints (default: every one)")
    add_report_arg(p, "pretraining (stage pretrain)")
    p.add_argument("--out", required=True, help="output directory")
    add_deepspeed_args(p)
    args = p.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        p.error("--steps must be >= 1")
    return args


def run(args) -> int:
    run_pretraining(settings_from_args(PretrainSettings, args, **vars(model_inputs(args))))
    return 0


main = main_of(parse_args, run)

if __name__ == "__main__":
    sys.exit(main())
