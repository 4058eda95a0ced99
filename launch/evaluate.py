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

import sys


def _task_help() -> str:
    from bioprune.engine.evaluation.settings import TASK_ALIASES, TASKS

    lines = []
    for t in TASKS.values():
        lines.append(f"  {t.name:<17} {t.data}\n{'':<20}split: {t.split}\n{'':<20}head: {t.head}"
                     f"\n{'':<20}metrics: {t.metrics}")
    return "\n".join(lines), ",".join(TASK_ALIASES["rna"]), ",".join(TASK_ALIASES["protein"])


def parse_args(argv=None):
    from bioprune.engine.cli import settings_parser
    from bioprune.engine.evaluation.settings import EvalSettings

    tasks, rna, protein = _task_help()
    p, _ = settings_parser(EvalSettings, __doc__.replace("@TASKS@", tasks).replace("@RNA@", rna)
                           .replace("@PROTEIN@", protein))   # every flag: an EvalSettings field
    return p.parse_args(argv)


def run(args) -> int:
    from bioprune.engine.cli import settings_from_args
    from bioprune.engine.evaluation import EvalSettings, evaluate
    from bioprune.engine.evaluation.tasks import EvalError
    from bioprune.engine.runtime.errors import fail

    settings = settings_from_args(
        EvalSettings, args,
        argv=list(sys.argv if args.argv is None else ["launch/evaluate.py", *args.argv]))
    try:
        evaluate(settings)     # checks every flag first (runtime.flags.check_fields)
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
