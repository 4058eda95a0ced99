"""Select a coreset from a scores directory (DESIGN step 4): Top-I, CCI or Random, exactly.

    deepspeed launch/select_coreset.py --scores RUN/scores --strategy cci --budget 200000 --out RUN/cci
    python launch/select_coreset.py --scores RUN/scores --strategy topk --fraction 0.01 --out RUN/top1

Every rank reads a disjoint share of the score parts; thresholds are found by distributed radix
selection (all-reduced digit histograms), so no rank ever holds more than its share of the
scores,
and the coreset is bitwise the same for any number of ranks. Only the selected corpus indices
travel, to rank 0, which writes (each atomically) into --out:

  coreset.npy           int64 corpus indices, ascending
  selection.json        strategy, parameters, n, budget, strata (edges / sizes / budgets / picks),
                        score summary (min / max / mean / quantiles), histogram counts
  score_histogram.png   log-count histogram of all scores, strata edges, hard cut-off, picked mass
  coreset.fasta         with --data: the selected records

Rules (DESIGN.md "Exact rules"): rank by (score descending, corpus index ascending). topk keeps the
first k. cci drops the first floor(beta*n), splits [lo, hi] of the rest into K equal-width strata
(stratum min(K-1, floor((s-lo)/(hi-lo)*K)), float64), gives budgets by Algorithm 1 (strata by size
ascending, each min(size, floor(left/strata_left))) and picks inside a stratum the smallest keys
hash(seed, index). random keeps the m smallest keys hash(seed, index).

Bad input (NaN/inf scores, an index missing or repeated, a budget out of range, a missing or
unfinished scores directory) ends every rank with one line "error: ..." and exit code 2.
"""
from __future__ import annotations

import os
import sys


import argparse
import json
import time
from pathlib import Path


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows '(default: X)' for options with a default that the help does not already state."""

    def _get_help_string(self, action):
        h = action.help or ""
        d = action.default
        if ("default" not in h and d is not None and d is not False and d != argparse.SUPPRESS
                and action.option_strings):
            h += " (default: %(default)s)"
        return h


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=_Formatter)
    p.add_argument("--scores", required=True, metavar="DIR",
                   help="a finished scores directory (RUN/scores: part-*.parquet + _SUCCESS)")
    p.add_argument("--strategy", required=True, choices=("topk", "cci", "random"),
                   help="topk: the k highest scores (ties to the smaller index); cci: hard "
                        "cut-off + K equal-width strata + Algorithm 1 budgets + hashed picks; "
                        "random: the m smallest keys hash(seed, index)")
    b = p.add_mutually_exclusive_group(required=True)
    b.add_argument("--budget", type=int, metavar="M",
                   help="coreset size (topk/random: 1..n; cci: 1..n - floor(beta*n))")
    b.add_argument("--fraction", type=float, metavar="F",
                   help="coreset size as a fraction of n: budget = floor(F * n), F in (0, 1]")
    p.add_argument("--hard-cutoff", type=float, default=0.05, metavar="BETA",
                   help="cci: drop the floor(BETA * n) highest-ranked samples first, BETA in [0, 1)")
    p.add_argument("--strata", type=int, default=50, metavar="K",
                   help="cci: number of equal-width strata over the retained score range")
    p.add_argument("--seed", type=int, default=0,
                   help="cci/random: keys hash(seed, corpus index) order the picks")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--data", nargs="*", default=None, metavar="PATH",
                   help="also write coreset.fasta from the corpus: the input files in corpus "
                        "order; with no PATH, the paths recorded in RUN/manifest.json")
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
    p.add_argument("--local_rank", type=int, default=-1,
                   help="set by the deepspeed launcher; do not pass by hand")
    args = p.parse_args(argv)
    if args.hist_bins < 1:
        p.error("--hist-bins must be >= 1")
    return args


def corpus_settings(args) -> dict:
    """Paths / molecule / column / id column / cache of the corpus for --data: the scoring run's
    manifest (RUN/manifest.json next to RUN/scores) when present, flags override."""
    manifest = Path(args.scores).absolute().parent / "manifest.json"
    m = {}
    if manifest.is_file():
        try:
            m = json.loads(manifest.read_text()).get("corpus") or {}
        except (OSError, ValueError):
            m = {}
    paths = list(args.data) if args.data else list(m.get("paths") or [])
    same = bool(m.get("paths")) and [str(Path(p).absolute()) for p in paths] == \
        [str(Path(p).absolute()) for p in m["paths"]]
    cache = args.corpus_cache or (m.get("cache_dir") if same else None) \
        or str(Path(args.out) / "corpus")
    return {
        "paths": paths,
        "molecule": args.molecule or m.get("molecule") or "rna",
        "column": args.column or m.get("column") or "sequence",
        "id_column": args.id_column if args.id_column is not None else m.get("id_column"),
        "cache_dir": cache,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    from bioprune.engine.runtime import distributed

    distributed.init()
    try:
        code = run(args)
    except BaseException:  # noqa: BLE001 - an unexpected failure on one rank
        # Exit at once without the group's closing barrier (the other ranks may be waiting in
        # another collective); the launcher then stops them.
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    distributed.finalize()
    return code


def run(args) -> int:
    from bioprune.engine.io.scores import ScoresError, read_share
    from bioprune.engine.selection.exact import select
    from bioprune.engine.selection.radix import Comm, agree
    from bioprune.engine.selection.report import FASTA, write_fasta, write_outputs
    from bioprune.engine.selection.rules import SelectionError, budget_from_fraction

    comm = Comm()
    t0 = time.perf_counter()
    try:
        data, n = read_share(args.scores, comm)
        t_read = time.perf_counter() - t0
        budget = args.budget if args.budget is not None else budget_from_fraction(args.fraction, n)
        corpus = None
        if args.data is not None:
            corpus = _open_corpus(args, n, comm)
        result = select(data["index"], data["score"], args.strategy, budget,
                        hard_cutoff=args.hard_cutoff, strata=args.strata, seed=args.seed, n=n,
                        validate=not args.no_validate, hist_bins=args.hist_bins, comm=comm)
        del data
        report = result.report
        report["scores_dir"] = str(Path(args.scores).absolute())
        report["timings_s"]["read_scores"] = round(t_read, 4)
        if args.fraction is not None:
            report["parameters"]["fraction"] = args.fraction
        err = None
        if comm.rank == 0:
            try:
                if corpus is not None:
                    report["fasta"] = FASTA
                paths = write_outputs(args.out, result.indices, report, plot=not args.no_plot)
                if corpus is not None:
                    write_fasta(corpus, result.indices, Path(args.out) / FASTA)
                print(f"selected {report['selected']:,} of {n:,} ({args.strategy}) on "
                      f"{comm.world} rank(s) in {time.perf_counter() - t0:.2f} s -> "
                      f"{paths['coreset']}", flush=True)
            except Exception as e:  # noqa: BLE001 - every rank must learn of it
                err = f"writing the outputs failed: {e}"
        err = agree(comm, err)
        if err:
            raise SelectionError(err)
    except (ScoresError, SelectionError) as e:
        if comm.rank == 0:
            print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    return 0


def _open_corpus(args, n, comm):
    from bioprune.engine.io.scores import ScoresError
    from bioprune.engine.selection.radix import agree

    s = corpus_settings(args)
    corpus, err = None, None
    if not s["paths"]:
        err = ("--data needs input paths: none given and no corpus paths in "
               f"{Path(args.scores).absolute().parent / 'manifest.json'}")
    err = agree(comm, err)
    if err:
        raise ScoresError(err)
    try:
        from bioprune.engine.data.corpus import load_corpus

        corpus = load_corpus(s["paths"], s["molecule"], s["cache_dir"], column=s["column"],
                             id_column=s["id_column"])
        if len(corpus) != n:
            err = (f"the corpus ({', '.join(map(str, s['paths']))}) has {len(corpus):,} records "
                   f"but the scores have n = {n:,}: not the corpus that was scored")
    except Exception as e:  # noqa: BLE001 - CorpusError and friends, on every rank
        err = f"cannot open the corpus: {e}"
    err = agree(comm, err)
    if err:
        raise ScoresError(err)
    return corpus


if __name__ == "__main__":
    sys.exit(main())
