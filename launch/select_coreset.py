"""Select a coreset from a scores directory (DESIGN step 4): Top-I, CCI or Random, exactly.

    deepspeed launch/select_coreset.py --scores RUN/scores --strategy cci --budget 200000 \\
        --out RUN/cci
    python launch/select_coreset.py --scores RUN/scores --strategy topk --fraction 0.01 \\
        --out RUN/top1

Every rank reads a disjoint share of the score parts; thresholds are found by distributed radix
selection (all-reduced digit histograms), so no rank ever holds more than its share of the
scores,
and the coreset is bitwise the same for any number of ranks. Only the selected corpus indices
travel, to rank 0, which writes (each atomically) into --out:

  coreset.npy           int64 corpus indices, ascending
  selection.json        strategy, parameters, n, budget, strata (edges / sizes / budgets / picks),
                        score summary (min / max / mean / quantiles), histogram counts
  score_histogram.png   log-count histogram of all scores, strata edges, hard cut-off, picked mass
  coreset.fasta         with --data: the selected records as in the input files (header line and
                        residues unchanged; a table row as '>id' and its sequence cell)
  coreset.tsv           with --data: index, id, score, stratum of every selected record

Rules (DESIGN.md "Exact rules"): rank by (score descending, corpus index ascending). topk keeps the
first k. cci drops the first floor(beta*n), splits [lo, hi] of the rest into K equal-width strata
(stratum min(K-1, floor((s-lo)/(hi-lo)*K)), float64), gives budgets by Algorithm 1 (strata by size
ascending, each min(size, floor(left/strata_left))) and picks inside a stratum the smallest keys
hash(seed, index). random keeps the m smallest keys hash(seed, index).

Bad input (NaN/inf scores, an index missing or repeated, a budget out of range, a missing or
unfinished scores directory) ends every rank with one line "error: ..." and exit code 2.
"""
from __future__ import annotations

import argparse
import sys

from bioprune.engine.cli import add_local_rank_arg, main_of, settings_parser
from bioprune.engine.selection.pipeline import SelectSettings


def parse_args(argv=None) -> argparse.Namespace:
    p, _ = settings_parser(SelectSettings, __doc__)   # every flag: a field of SelectSettings
    add_local_rank_arg(p)
    args = p.parse_args(argv)
    if args.dedup and args.strategy == "cluster":
        p.error("--dedup is for topk/cci/random (--strategy cluster already keeps one per cluster)")
    if args.clusters and not (args.dedup or args.strategy == "cluster"):
        p.error("--clusters is used by --strategy cluster or --dedup")
    if (args.strategy == "cluster" or args.dedup) and args.data is None:
        args.data = []   # the corpus is needed: the scoring run's inputs unless --data names them
    return args


def run(args) -> int:
    from bioprune.engine.cli import settings_from_args
    from bioprune.engine.selection.pipeline import run_selection

    run_selection(settings_from_args(SelectSettings, args))
    return 0


main = main_of(parse_args, run)


if __name__ == "__main__":
    sys.exit(main())
