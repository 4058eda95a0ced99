"""The pruning study, end to end, from one config file: held-out split → reference model
→ scores (with and without adaptation) → arms (Full; Random / Top-I / CCI at several rates; Random
at 2× and 10× the base coreset; CCI w/o ft; MMseqs2 cluster representatives), each pretrained from
scratch and evaluated with launch/evaluate.py → results.csv, results.md, plots/, manifest.json.

    python launch/experiment.py --config configs/experiments/rna-1pct.toml --out runs/exp-rna-1pct
    make experiment            # the same (about 100 min on a 2-core CPU, two arms at a time)
    make experiment-quick      # a few minutes: every arm, one seed, same results.csv columns

Rerunning with the same --out skips every finished step (each leaves an atomic _DONE.json).
"""
from __future__ import annotations

import argparse
import json
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="experiment TOML (configs/experiments/*.toml)")
    p.add_argument("--out", required=True, help="experiment directory (rerun the same to resume)")
    p.add_argument("--init", metavar="WEIGHTS", default=None,
                   help="reference weights to score with (skips pretraining a reference model)")
    p.add_argument("--ranks", type=int, default=None,
                   help="ranks for pretraining and scoring (default: the config's training.ranks)")
    p.add_argument("--epochs", type=int, default=None,
                   help="train every arm for this many epochs on its own set "
                        "(the paper's schedule) instead of the compute-matched default "
                        "(same optimizer steps per arm)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                   help="override a config value, e.g. --set training.steps=200 --set 'seeds=[0]'")
    p.add_argument("--dry-run", action="store_true", help="print the plan and time estimate only")
    p.add_argument("--evaluate-only", action="store_true",
                   help="a second worker beside a running study: evaluate every trained arm that "
                        "is not evaluated yet, waiting for the others to finish training (on a "
                        "CPU give each process OMP_NUM_THREADS=1); the main run then skips them")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from bioprune.engine.experiments.config import load_config
    from bioprune.engine.experiments.study import Study

    args = parse_args(argv)
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    if args.epochs is not None:
        overrides["training.mode"] = "epochs"
        overrides["training.epochs"] = args.epochs
    cfg = load_config(args.config, overrides)
    study = Study(cfg, args.out, ranks=args.ranks, init=args.init)
    if args.evaluate_only:
        study.evaluate_ready()
    else:
        study.run(dry_run=args.dry_run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
