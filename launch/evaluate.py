"""Evaluate an encoder on downstream tasks (DESIGN step 6): probes on its representations.

    python launch/evaluate.py --model rnafm --model-size tiny --run runs/demo/pretrain-cci \\
        --tasks rna-type,rna-ss,rna-crispr,mlm --out runs/demo/eval
    python launch/evaluate.py --model rnafm --model-size tiny --init random --tasks rna \\
        --max-train 500 --max-test 300 --out runs/floor        # the random-encoder floor
    accelerate launch launch/evaluate.py ...                    # GPUs, mixed precision

Writes OUT/eval.json ({"tasks": {NAME: {"metrics": {METRIC: {"mean", "std", "values"}},
"n_train", "n_test", head/training settings, "frozen", ...}}, "encoder", "manifest", ["floor"]})
and OUT/eval.md (a Markdown table). Metric names are lower case, values are fractions; every
task reports mean ± std over --probe-seeds probe seeds.

tasks (data files under $BIOPRUNE_DATA, default ../shared/data):
@TASKS@
  rna / protein: shorthands for @RNA@ / @PROTEIN@

Embeddings are computed once per encoder and task and reused for every probe seed and fold.
Sequences longer than --max-length are cropped: sequence-level tasks keep the first ceil(m/2)
and last floor(m/2) residues, per-residue tasks the first m (labels alike); rna-ss* drop
sequences longer than --ss-max-length. --max-train/--max-test keep the rows with the smallest
hash(--split-seed, row) keys, the same for every encoder; rows never cross between train and test.
A user CSV (csv:PATH) has columns id,sequence,label[,split]; its task is regression when every
label is numeric with more than 20 distinct values, else classification (--csv-kind overrides).
"""
from __future__ import annotations

import argparse
import sys


def _task_help() -> str:
    from bioprune.engine.evaluation.settings import TASK_ALIASES, TASKS

    lines = []
    for t in TASKS.values():
        lines.append(f"  {t.name:<17} {t.data}\n{'':<20}split: {t.split}\n{'':<20}head: {t.head}"
                     f"\n{'':<20}metrics: {t.metrics}")
    return "\n".join(lines), ",".join(TASK_ALIASES["rna"]), ",".join(TASK_ALIASES["protein"])


def parse_args(argv=None):
    from bioprune.engine.cli import HelpFormatter
    from bioprune.engine.models import MODEL_NAMES, SIZES

    tasks, rna, protein = _task_help()
    p = argparse.ArgumentParser(description=__doc__.replace("@TASKS@", tasks).replace("@RNA@", rna)
                                .replace("@PROTEIN@", protein),
                                formatter_class=HelpFormatter)
    g = p.add_argument_group("encoder (exactly one of --weights, --run, --init)")
    g.add_argument("--model", choices=MODEL_NAMES, required=True,
                   help="rnafm (RNA tasks) or esmc (protein tasks)")
    sizes = "; ".join(f"{m}: {', '.join(s)}" for m, s in SIZES.items())
    g.add_argument("--model-size", default="tiny", help=f"architecture size ({sizes})")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", metavar="FILE",
                     help="a state dict (.safetensors/.pt) or the released RNA-FM_pretrained.pth")
    src.add_argument("--run", metavar="DIR",
                     help="a pretraining output (uses DIR/final; mlm defaults to its corpus and "
                          "heldout.npy), a scoring run (DIR/adapted) or a directory holding "
                          "model.safetensors + config.json")
    src.add_argument("--init", choices=("random",),
                     help="a freshly initialised encoder (seeded by --seed): the floor row")
    g.add_argument("--floor", action="store_true",
                   help="also evaluate a random-initialised encoder of the same size and add it "
                        "as the floor column/section of eval.json and eval.md")
    t = p.add_argument_group("tasks")
    t.add_argument("--tasks", required=True, metavar="T1,T2,...",
                   help="comma-separated tasks (see the list above), "
                        "e.g. rna-type,rna-ss,csv:my.csv")
    t.add_argument("--seed", type=int, default=0,
                   help="first probe seed (probe seeds are SEED..SEED+N-1) and the "
                        "--init random seed")
    t.add_argument("--probe-seeds", type=int, default=3, help="probe seeds per task (mean ± std)")
    t.add_argument("--split-seed", type=int, default=0,
                   help="seed of the hashed splits and --max-train/--max-test subsamples; keep it "
                        "fixed across encoders so they see the same rows")
    mode = t.add_mutually_exclusive_group()
    mode.add_argument("--frozen", dest="frozen", action="store_true", default=True,
                      help="probes on fixed embeddings, computed once (the default; ~100x cheaper)")
    mode.add_argument("--finetune", dest="frozen", action="store_false",
                      help="fine-tune the encoder with the head on sequence-level tasks (rna-type, "
                           "rna-crispr, protein-loc, csv); per-residue/pair tasks stay frozen")
    t.add_argument("--control", choices=("random-labels",), default=None,
                   help="random-labels: labels drawn at random, for train and test rows alike, "
                        "from the training label distribution (must score at chance); rna-ss* "
                        "and mlm are skipped")
    c = p.add_argument_group("size caps (deterministic; for a cheap run)")
    c.add_argument("--max-train", type=int, default=None, help="training rows per task/fold")
    c.add_argument("--max-test", type=int, default=None, help="test rows per task/fold")
    c.add_argument("--max-length", type=int, default=None,
                   help="residues per sequence (default: the model's, 1022 rnafm / 2046 esmc)")
    c.add_argument("--ss-max-train", type=int, default=None,
                   help="rna-ss*: training sequences per fold (default: --max-train); the pair "
                        "head costs ~50 ms per sequence and epoch on a CPU")
    c.add_argument("--ss-max-test", type=int, default=None,
                   help="rna-ss*: test sequences per fold (default: --max-test)")
    c.add_argument("--ss-max-length", type=int, default=200,
                   help="rna-ss*: sequences longer than this are dropped (pair maps are L x L)")
    h = p.add_argument_group("probes")
    h.add_argument("--probe-epochs", type=int, default=30, help="epochs of sequence-level probes")
    h.add_argument("--probe-lr", type=float, default=1e-3, help="AdamW lr of the probes")
    h.add_argument("--probe-batch-size", type=int, default=64, help="sequences per probe step")
    h.add_argument("--probe-weight-decay", type=float, default=0.01, help="AdamW weight decay")
    h.add_argument("--probe-hidden", type=int, default=128, help="hidden width of the MLP heads")
    h.add_argument("--token-epochs", type=int, default=10, help="epochs of per-residue probes")
    h.add_argument("--token-batch-size", type=int, default=1024,
                   help="residues per per-residue step")
    h.add_argument("--ss-epochs", type=int, default=10, help="epochs of the base-pair head")
    h.add_argument("--ss-lr", type=float, default=1e-2, help="lr of the base-pair head")
    h.add_argument("--ss-channels", type=int, default=8, help="channels of the base-pair head")
    h.add_argument("--ss-batch-size", type=int, default=4,
                   help="sequences (of similar length) per step of the base-pair head")
    h.add_argument("--finetune-epochs", type=int, default=3, help="epochs with --finetune")
    h.add_argument("--finetune-lr", type=float, default=1e-4,
                   help="lr with --finetune (paper: 1e-4)")
    h.add_argument("--embed-batch-size", type=int, default=32,
                   help="sequences per forward pass of the encoder")
    h.add_argument("--csv-kind", choices=("auto", "classification", "regression"), default="auto",
                   help="task type of csv:PATH tasks")
    m = p.add_argument_group("mlm")
    m.add_argument("--mlm-data", nargs="+", default=[], metavar="PATH",
                   help="the corpus (FASTA/CSV/TSV/Parquet; as for pretrain.py --data)")
    m.add_argument("--mlm-indices", metavar="NPY", default=None,
                   help="held-out corpus indices (e.g. a pretraining run's heldout.npy); default: "
                        "--run's heldout.npy, else a hashed sample of --mlm-max sequences")
    m.add_argument("--mlm-all", action="store_true",
                   help="--mlm-data is a held-out set: evaluate every record of it (default: a "
                        "hashed tenth of it, the pretraining held-out rule). With --mlm-mask-seed, "
                        "what a study needs so every model sees the same sequences and masks")
    m.add_argument("--mlm-mask-seed", type=int, default=None, metavar="N",
                   help="masks (and crops) of mlm come from seeds N, N+1, ... (one per probe "
                        "seed); default: --seed. Fix it to compare models trained with other seeds")
    m.add_argument("--mlm-max", type=int, default=None,
                   help="held-out sequences evaluated at most, a hashed sample beyond it "
                        "(default 500; no cap with --mlm-all)")
    m.add_argument("--mlm-column", default="sequence", help="sequence column of table inputs")
    m.add_argument("--mlm-cache", metavar="DIR", default=None,
                   help="memory-mapped corpus cache (default OUT/mlm_corpus)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads for the encoder (default: torch's); on a busy shared "
                        "CPU, 1 is often several times faster. Probe heads always use 1 on a CPU")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    return p.parse_args(argv)


def run(args) -> int:
    from bioprune.engine.cli import settings_from_args
    from bioprune.engine.evaluation import EvalSettings, evaluate
    from bioprune.engine.evaluation.tasks import EvalError
    from bioprune.engine.runtime.errors import fail

    for flag in ("probe_seeds", "max_train", "max_test", "max_length", "embed_batch_size",
                 "mlm_max", "threads", "ss_max_train", "ss_max_test"):
        v = getattr(args, flag)
        if v is not None and v < 1:
            fail(f"--{flag.replace('_', '-')} must be at least 1 (got {v})")
    settings = settings_from_args(
        EvalSettings, args, tasks=[x for x in args.tasks.split(",") if x.strip()],
        argv=list(sys.argv if args.argv is None else ["launch/evaluate.py", *args.argv]))
    try:
        evaluate(settings)
    except EvalError as e:
        fail(str(e))
    print(f"wrote {args.out}/eval.json and eval.md", flush=True)
    return 0


def main(argv=None) -> int:
    """One process (probe training goes through accelerate: ``accelerate launch`` for GPUs);
    user mistakes end in one line ``error: ...`` and exit code 2."""
    from bioprune.engine.runtime.errors import UsageError

    args = parse_args(argv)
    args.argv = argv
    try:
        return run(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
