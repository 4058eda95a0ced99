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

from bioprune.engine.cli import HelpFormatter, add_local_rank_arg, add_run_args, main_of


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--scores", required=True, metavar="DIR",
                   help="a finished scoring run (RUN) or its scores directory (RUN/scores: "
                        "part-*.parquet + _SUCCESS)")
    p.add_argument("--strategy", required=True, choices=("topk", "cci", "random", "cluster"),
                   help="topk: the k highest scores (ties to the smaller index); cci: hard "
                        "cut-off + K equal-width strata + Algorithm 1 budgets + hashed picks; "
                        "random: the m smallest keys hash(seed, index); cluster: MMseqs2 cluster "
                        "representatives of the scored corpus (the redundancy-reduction "
                        "baseline; scores unused; needs the corpus: --data or the run's manifest)")
    b = p.add_mutually_exclusive_group(required=True)
    b.add_argument("--budget", type=int, metavar="M",
                   help="coreset size (topk/random: 1..n; cci: 1..n - floor(beta*n))")
    b.add_argument("--fraction", type=float, metavar="F",
                   help="coreset size as a fraction of n: budget = floor(F * n), F in (0, 1]")
    p.add_argument("--hard-cutoff", type=float, default=0.05, metavar="BETA",
                   help="cci: drop the floor(BETA * n) highest-ranked samples first, "
                        "BETA in [0, 1)")
    p.add_argument("--strata", type=int, default=50, metavar="K",
                   help="cci: number of equal-width strata over the retained score range")
    p.add_argument("--seed", type=int, default=0,
                   help="cci/random/cluster: keys hash(seed, corpus index) order the picks")
    c = p.add_argument_group("cluster (MMseqs2)")
    c.add_argument("--cluster-identity", type=float, default=0.5, metavar="ID",
                   help="minimum sequence identity within a cluster (mmseqs --min-seq-id)")
    c.add_argument("--cluster-coverage", type=float, default=0.8, metavar="C",
                   help="minimum alignment coverage of query and target (mmseqs -c, --cov-mode 0)")
    c.add_argument("--cluster-mode", choices=("cluster", "linclust"), default="cluster",
                   help="easy-cluster (reproducible run to run) or easy-linclust (linear time, for "
                        "very large corpora; its clusters can differ between runs)")
    c.add_argument("--threads", type=int, default=None,
                   help="MMseqs2 threads (default: every core of the machine; the table is saved "
                        "as OUT/clusters.tsv, so a coreset is reproducible from it)")
    c.add_argument("--clusters", metavar="TSV", default=None,
                   help="use this cluster table instead of running MMseqs2: representative<TAB>"
                        "member lines by record id (MMseqs2's *_cluster.tsv, a selection's "
                        "clusters.tsv, UniRef50 or Rfam memberships converted to it); every "
                        "corpus record exactly once")
    c.add_argument("--dedup", action="store_true",
                   help="topk/cci/random: select among cluster representatives only (one record "
                        "per cluster, from --clusters or MMseqs2), so near-copies cannot fill "
                        "the coreset; the budget is still a count of records")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--data", nargs="*", default=None, metavar="PATH",
                   help="also write coreset.fasta (the selected records copied unchanged from "
                        "these input files) and coreset.tsv: the input files in corpus order; "
                        "with no PATH, the paths recorded in RUN/manifest.json")
    p.add_argument("--molecule", choices=("rna", "protein"), default=None,
                   help="corpus alphabet for --data (default: RUN/manifest.json's, else rna)")
    p.add_argument("--column", default=None,
                   help="sequence column of table inputs for --data (default: the manifest's, "
                        "else 'sequence')")
    p.add_argument("--id-column", default=None,
                   help="record-id column of table inputs for --data (default: the manifest's)")
    p.add_argument("--corpus-cache", default=None, metavar="DIR",
                   help="corpus cache for --data (default: the manifest's when the paths match, "
                        "else OUT/corpus)")
    p.add_argument("--no-validate", action="store_true",
                   help="skip the exact check that the indices are a permutation of 0..n-1 "
                        "(the range check and the NaN/inf check always run)")
    p.add_argument("--hist-bins", type=int, default=100,
                   help="bins of the score histogram (selection.json and the PNG)")
    p.add_argument("--no-plot", action="store_true", help="do not draw score_histogram.png")
    add_run_args(p, inputs=False)
    add_local_rank_arg(p)
    args = p.parse_args(argv)
    if args.dedup and args.strategy == "cluster":
        p.error("--dedup is for topk/cci/random (--strategy cluster already keeps one per cluster)")
    if args.clusters and not (args.dedup or args.strategy == "cluster"):
        p.error("--clusters is used by --strategy cluster or --dedup")
    if (args.strategy == "cluster" or args.dedup) and args.data is None:
        args.data = []   # the corpus is needed: the scoring run's inputs unless --data names them
    if args.hist_bins < 1:
        p.error("--hist-bins must be >= 1")
    return args


def run(args) -> int:
    from bioprune.engine.cli import settings_from_args
    from bioprune.engine.selection.pipeline import SelectSettings, run_selection

    run_selection(settings_from_args(SelectSettings, args))
    return 0


main = main_of(parse_args, run)


if __name__ == "__main__":
    sys.exit(main())
