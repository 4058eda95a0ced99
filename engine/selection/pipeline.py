"""Selecting a coreset from a finished scores directory (DESIGN step 4), called by
``launch/select_coreset.py`` and the experiment harness.

Every rank reads a disjoint share of the score parts; :func:`bioprune.engine.selection.exact.select`
finds the coreset by distributed radix selection; only the selected corpus indices travel, to
rank 0, which writes the outputs (:mod:`bioprune.engine.selection.report`). Collective.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bioprune.engine.io.scores import ScoresError, read_share
from bioprune.engine.runtime.collectives import Comm, raise_together
from bioprune.engine.runtime import validate
from bioprune.engine.runtime.errors import UsageError, fail
from bioprune.engine.runtime.flags import Exclusive, Flag, at_least, finite, setting
from bioprune.engine.runtime.run_flags import OVERWRITE
from bioprune.engine.selection.exact import HIST_BINS, SelectionResult, select
from bioprune.engine.selection.rules import SelectionError, budget_from_fraction, budget_range


CLUSTER = "cluster (MMseqs2)"
BUDGET = Exclusive("budget", required=True)


def _cache_dir(name: str, path) -> None:
    if path is not None and Path(path).exists() and not Path(path).is_dir():
        fail(f"--corpus-cache {path}: is a file, not a directory")


def _clusters_file(name: str, path) -> None:
    validate.readable_file(name, path, "cluster table (representative<TAB>member TSV)")


# Every flag of select_coreset.py is declared here, once (runtime.flags). The field order is the
# order of the run identity's keys in run_config.json; --scores is in the identity by its
# _SUCCESS (checks.py).
@dataclass
class SelectSettings:
    scores: str = setting(identity=False, flag=Flag(
        required=True, metavar="DIR",
        help="a finished scoring run (RUN) or its scores directory (RUN/scores: part-*.parquet + "
             "_SUCCESS)"))
    strategy: str = setting(identity=True, flag=Flag(
        required=True, choices=("topk", "cci", "random", "cluster"),
        help="topk: the k highest scores (ties to the smaller index); cci: hard cut-off + K "
             "equal-width strata + Algorithm 1 budgets + hashed picks; random: the m smallest "
             "keys hash(seed, index); cluster: MMseqs2 cluster representatives of the scored "
             "corpus (the redundancy-reduction baseline; scores unused; needs the corpus: --data "
             "or the run's manifest)"))
    out: str = setting(identity=False, check=validate.output_dir, flag=Flag(
        required=True, metavar="DIR", help="output directory"))
    budget: int | None = setting(None, identity=True, check=at_least(1), flag=Flag(
        type=int, metavar="M", exclusive=BUDGET,
        help="coreset size (topk/random: 1..n; cci: 1..n - floor(beta*n))"))
    fraction: float | None = setting(None, identity=True, check=finite(
        low=0, high=1, low_open=True, what="a fraction of n"), flag=Flag(
        type=float, metavar="F", exclusive=BUDGET,
        help="coreset size as a fraction of n: budget = floor(F * n), F in (0, 1]"))
    hard_cutoff: float = setting(0.05, identity=True, check=finite(
        low=0, high=1, high_open=True, what="the share of top scores dropped"), flag=Flag(
        type=float, metavar="BETA",
        help="cci: drop the floor(BETA * n) highest-ranked samples first, BETA in [0, 1)"))
    strata: int = setting(50, identity=True, check=at_least(1), flag=Flag(
        type=int, metavar="K",
        help="cci: number of equal-width strata over the retained score range"))
    seed: int = setting(0, identity=True, check=at_least(0), flag=Flag(
        type=int, help="cci/random/cluster: keys hash(seed, corpus index) order the picks"))
    # write coreset.fasta; [] = the scoring run's inputs
    data: list[str] | None = setting(None, identity=True, flag=Flag(
        nargs="*", metavar="PATH",
        help="also write coreset.fasta (the selected records copied unchanged from these input "
             "files) and coreset.tsv: the input files in corpus order; with no PATH, the paths "
             "recorded in RUN/manifest.json"))
    molecule: str | None = setting(None, identity=True, flag=Flag(
        choices=("rna", "protein"),
        help="corpus alphabet for --data (default: RUN/manifest.json's, else rna)"))
    column: str | None = setting(None, identity=True, flag=Flag(
        help="sequence column of table inputs for --data (default: the manifest's, else "
             "'sequence')"))
    id_column: str | None = setting(None, identity=True, flag=Flag(
        help="record-id column of table inputs for --data (default: the manifest's)"))
    corpus_cache: str | None = setting(None, identity=False, check=_cache_dir, flag=Flag(
        metavar="DIR",
        help="corpus cache for --data (default: the manifest's when the paths match, else "
             "OUT/corpus)"))
    no_validate: bool = setting(False, identity=True, flag=Flag(
        action="store_true",
        help="skip the exact check that the indices are a permutation of 0..n-1 (the range "
             "check and the NaN/inf check always run)"))
    hist_bins: int = setting(HIST_BINS, identity=True, check=at_least(1, "{flag} must be >= 1"),
                             flag=Flag(
        type=int, help="bins of the score histogram (selection.json and the PNG)"))
    no_plot: bool = setting(False, identity=True, flag=Flag(
        action="store_true", help="do not draw score_histogram.png"))
    # --strategy cluster: MMseqs2 --min-seq-id
    cluster_identity: float = setting(0.5, identity=True, flag=Flag(
        type=float, metavar="ID", group=CLUSTER,
        help="minimum sequence identity within a cluster (mmseqs --min-seq-id)"))
    # MMseqs2 -c (coverage of query and target)
    cluster_coverage: float = setting(0.8, identity=True, flag=Flag(
        type=float, metavar="C", group=CLUSTER,
        help="minimum alignment coverage of query and target (mmseqs -c, --cov-mode 0)"))
    # easy-cluster (reproducible) or easy-linclust (linear time)
    cluster_mode: str = setting("cluster", identity=True, flag=Flag(
        choices=("cluster", "linclust"), group=CLUSTER,
        help="easy-cluster (reproducible run to run) or easy-linclust (linear time, for very "
             "large corpora; its clusters can differ between runs)"))
    # MMseqs2 threads; None = every core
    threads: int | None = setting(None, identity=False, check=at_least(1), flag=Flag(
        type=int, group=CLUSTER,
        help="MMseqs2 threads (default: every core of the machine; the table is saved as "
             "OUT/clusters.tsv, so a coreset is reproducible from it)"))
    # a representative/member TSV by id instead of MMseqs2
    clusters: str | None = setting(None, identity=True, check=_clusters_file, flag=Flag(
        metavar="TSV", group=CLUSTER,
        help="use this cluster table instead of running MMseqs2: representative<TAB>member "
             "lines by record id (MMseqs2's *_cluster.tsv, a selection's clusters.tsv, UniRef50 "
             "or Rfam memberships converted to it); every corpus record exactly once"))
    # topk/cci/random among cluster representatives only
    dedup: bool = setting(False, identity=True, flag=Flag(
        action="store_true", group=CLUSTER,
        help="topk/cci/random: select among cluster representatives only (one record per "
             "cluster, from --clusters or MMseqs2), so near-copies cannot fill the coreset; the "
             "budget is still a count of records"))
    # replace another selection's outputs in out
    overwrite: bool = setting(False, identity=False, flag=OVERWRITE)


def select_from_scores(scores_dir, strategy: str, budget: int | None = None,
                       fraction: float | None = None, comm: Comm | None = None,
                       rep: np.ndarray | None = None, **kwargs) -> SelectionResult:
    """Collective: read this rank's share of a finished scores directory and :func:`select`.
    Give ``budget`` or ``fraction`` (budget = floor(fraction * n)). With ``rep`` (a cluster
    table, every rank), only cluster representatives are selected from."""
    comm = comm or Comm()
    if (budget is None) == (fraction is None):
        raise SelectionError("give exactly one of budget and fraction")
    t0 = time.perf_counter()
    data, n = read_share(scores_dir, comm)
    t_read = time.perf_counter() - t0
    if budget is None:
        budget = fraction_budget(strategy, fraction, n, kwargs.get("hard_cutoff", 0.05))
    if rep is not None:   # dedup: the exact selection over the representatives' positions
        from bioprune.engine.selection.cluster_table import representatives_only

        if len(rep) != n:
            raise SelectionError(f"the cluster table has {len(rep):,} records, the scores {n:,}")
        pos, sc, reps = representatives_only(rep, data["index"], data["score"])
        result = select(pos, sc, strategy, budget, n=len(reps), comm=comm, **kwargs)
        result.local_indices = reps[result.local_indices]
        if result.indices is not None:
            result.indices = reps[result.indices]
        result.report["dedup"] = {"representatives": int(len(reps)), "n": int(n),
                                  "rule": "the selection ran over the cluster representatives' "
                                          "scores; positions among them key the hashed picks"}
        result.report["n"] = n
    else:
        result = select(data["index"], data["score"], strategy, budget, n=n, comm=comm,
                        **kwargs)
    result.report["scores_dir"] = str(Path(scores_dir).absolute())
    result.report["timings_s"]["read_scores"] = round(t_read, 4)
    if fraction is not None:
        result.report["parameters"]["fraction"] = fraction
    return result


def fraction_budget(strategy: str, fraction: float, n: int, hard_cutoff: float = 0.05) -> int:
    """--fraction F as a budget (floor(F * n)), with an error about F, not about a budget the
    user never gave, when it falls outside what ``strategy`` can keep."""
    budget = budget_from_fraction(fraction, n)
    lo, hi = budget_range(strategy, n, hard_cutoff)
    if not lo <= budget <= hi:
        hint = (f"give --fraction >= {lo / n:.6g}" if budget < lo
                else f"give --fraction <= {hi / n:.6g}")
        why = (f"cci first drops the floor({hard_cutoff} * n) = {n - hi:,} highest-ranked "
               f"samples (--hard-cutoff), so it keeps at most {hi:,}" if strategy == "cci"
               else f"a coreset holds between {lo} and {hi:,}")
        raise SelectionError(f"--fraction {fraction} of n = {n:,} scored samples is "
                             f"{budget:,} samples, but {why}: {hint}")
    return budget


def run_selection(s: SelectSettings) -> SelectionResult:
    """Select and write ``s.out`` (rank 0). Errors are raised on every rank together as
    ScoresError / SelectionError."""
    from bioprune.engine.selection.checks import begin_selection, write_unit
    from bioprune.engine.selection.cluster_table import TABLE as CLUSTERS
    from bioprune.engine.selection.cluster_table import write_cluster_table
    from bioprune.engine.selection.report import (FASTA, LENGTH_PLOT, TABLE,
                                                  plot_score_vs_length, write_fasta,
                                                  write_outputs, write_table)
    from bioprune.engine.selection.summary import print_summary

    identity = begin_selection(s)    # every flag checked; another selection in --out refused
    if s.strategy == "cluster":
        return run_cluster_selection(s, identity)
    comm = Comm()
    t0 = time.perf_counter()
    # the corpus is opened (and checked against n) before the selection's heavy work
    n = read_share_count(s.scores, comm) if s.data is not None else None
    corpus = _open_corpus(s, n, comm) if s.data is not None else None
    rep = shared_cluster_table(s, corpus, comm) if s.dedup else None
    result = select_from_scores(s.scores, s.strategy, s.budget, s.fraction, comm, rep=rep,
                                hard_cutoff=s.hard_cutoff, strata=s.strata, seed=s.seed,
                                validate=not s.no_validate, hist_bins=s.hist_bins)
    report, err = result.report, None
    digest = corpus_settings(s)["content_digest"]
    if digest:   # the coreset's indices are positions in this corpus; pretrain checks it
        report["corpus_digest"] = digest
    if comm.rank == 0:
        try:
            if corpus is not None:
                report["fasta"], report["table"] = FASTA, TABLE
            if rep is not None:
                report["clusters_table"] = CLUSTERS

            def write(stage):
                write_outputs(stage, result.indices, report, plot=not s.no_plot)
                if corpus is not None:
                    write_fasta(corpus, result.indices, stage / FASTA)
                    write_table(corpus, result.indices,
                                None if s.strategy == "random" else result.scores, report,
                                stage / TABLE)
                if rep is not None:
                    write_cluster_table(stage / CLUSTERS, rep, corpus)
                if not s.no_plot:   # score against length, picked samples highlighted
                    plotted["rho"] = plot_score_vs_length(s.scores, result.indices,
                                                          stage / LENGTH_PLOT)

            plotted = {}
            write_unit(s, identity, write)   # --out locked; replaces the old set as one unit
            print(f"selected {report['selected']:,} of {report['n']:,} ({s.strategy}) on "
                  f"{comm.world} rank(s) in {time.perf_counter() - t0:.2f} s -> "
                  f"{Path(s.out) / 'coreset.npy'}", flush=True)
            print_summary(report, s.scores, plotted.get("rho"))
        except UsageError as e:        # --out taken meanwhile: by a lock or another selection
            err = str(e)
        except Exception as e:  # noqa: BLE001 - every rank must learn of it
            err = f"writing the outputs failed: {e}"
    raise_together(comm, err, SelectionError)
    return result


def cluster_table(s: SelectSettings, corpus) -> tuple[np.ndarray, dict]:
    """(rep, info) of the corpus: read from ``--clusters`` or computed by MMseqs2 (one process,
    ``s.threads`` threads, every core by default)."""
    import os

    from bioprune.engine.selection.cluster import mmseqs_clusters
    from bioprune.engine.selection.cluster_table import read_cluster_table

    if s.clusters:
        rep = read_cluster_table(s.clusters, corpus)
        return rep, {"table": str(Path(s.clusters).absolute()),
                     "clusters": int(len(np.unique(rep)))}
    return mmseqs_clusters(corpus, identity=s.cluster_identity, coverage=s.cluster_coverage,
                           mode=s.cluster_mode, threads=s.threads or os.cpu_count() or 1)


def shared_cluster_table(s: SelectSettings, corpus, comm: Comm) -> np.ndarray:
    """The cluster table on every rank: rank 0 reads or computes it, the others load it from a
    hidden file in ``--out`` (a shared filesystem, as for the outputs)."""
    from bioprune.engine.io.atomic import save_npy

    path = Path(s.out) / ".dedup-clusters.npy"
    rep, err = None, None
    if comm.rank == 0:
        try:
            rep, info = cluster_table(s, corpus)
            print(f"dedup: {info['clusters']:,} clusters of {len(rep):,} records", flush=True)
            if comm.world > 1:
                save_npy(path, rep)
        except Exception as e:  # noqa: BLE001 - every rank must learn of it
            err = f"clustering failed: {e}"
    raise_together(comm, err, SelectionError)
    if comm.rank != 0:
        rep = np.load(path)
    raise_together(comm, None, SelectionError)     # every rank has read it
    if comm.rank == 0:
        path.unlink(missing_ok=True)
    return rep


def read_share_count(scores_dir, comm: Comm) -> int:
    """n of a scores directory (its _SUCCESS), agreed on every rank."""
    from bioprune.engine.io.scores import finished_parts

    n, err = None, None
    try:
        n, _ = finished_parts(scores_dir)
    except ScoresError as e:
        err = str(e)
    raise_together(comm, err, ScoresError)
    return n


def corpus_settings(s: SelectSettings) -> dict:
    """Paths / molecule / column / id column / cache of the corpus for --data: the scoring run's
    manifest (RUN/manifest.json next to RUN/scores) when present, flags override."""
    manifest = Path(s.scores).absolute().parent / "manifest.json"
    m = {}
    if manifest.is_file():
        try:
            m = json.loads(manifest.read_text()).get("corpus") or {}
        except (OSError, ValueError):
            m = {}
    paths = list(s.data) if s.data else list(m.get("paths") or [])
    same = bool(m.get("paths")) and [str(Path(p).absolute()) for p in paths] == \
        [str(Path(p).absolute()) for p in m["paths"]]
    cache = s.corpus_cache or (m.get("cache_dir") if same else None) \
        or str(Path(s.out) / "corpus")
    return {
        "paths": paths,
        "molecule": s.molecule or m.get("molecule") or "rna",
        "column": s.column or m.get("column") or "sequence",
        "id_column": s.id_column if s.id_column is not None else m.get("id_column"),
        "cache_dir": cache,
        "on_invalid": (m.get("stats") or {}).get("on_invalid", "error"),
        "content_digest": m.get("content_digest"),   # of the corpus that was scored
    }


def _open_corpus(s: SelectSettings, n: int, comm: Comm):
    from bioprune.engine.data.corpus import load_corpus

    c = corpus_settings(s)
    err = None
    if not c["paths"]:
        err = ("--data needs input paths: none given and no corpus paths in "
               f"{Path(s.scores).absolute().parent / 'manifest.json'}")
    raise_together(comm, err, ScoresError)
    corpus = None
    try:
        corpus = load_corpus(c["paths"], c["molecule"], c["cache_dir"], column=c["column"],
                             id_column=c["id_column"], on_invalid=c["on_invalid"])
        if len(corpus) != n:
            err = (f"the corpus ({', '.join(map(str, c['paths']))}) has {len(corpus):,} records "
                   f"but the scores have n = {n:,}: not the corpus that was scored")
        elif c["content_digest"] and (here := corpus.content_digest()) != c["content_digest"]:
            # same count, other content: other records, or the same ones in another order
            # (a score and a coreset index are corpus positions; they would name other records)
            err = (f"the corpus ({', '.join(map(str, c['paths']))}) has the scored run's "
                   f"{n:,} records' count but not its sequences in the same order (content "
                   f"digest {here} vs {c['content_digest']} in "
                   f"{Path(s.scores).absolute().parent / 'manifest.json'}): give --data the "
                   "files the scores were computed on, in the same order")
    except Exception as e:  # noqa: BLE001 - CorpusError and friends, on every rank
        err = f"cannot open the corpus: {e}"
    raise_together(comm, err, ScoresError)
    return corpus


def run_cluster_selection(s: SelectSettings, identity: dict) -> SelectionResult:
    """``--strategy cluster``: MMseqs2 cluster representatives of the scored corpus at the same
    budget (the redundancy-reduction baseline; scores are not used, only their n and corpus).
    MMseqs2 runs once, on rank 0, with ``s.threads`` threads; the others wait."""
    from bioprune.engine.selection.checks import write_unit
    from bioprune.engine.selection.cluster import select_from_clusters
    from bioprune.engine.selection.cluster_table import TABLE as CLUSTERS
    from bioprune.engine.selection.cluster_table import write_cluster_table
    from bioprune.engine.selection.report import (FASTA, TABLE, write_fasta, write_outputs,
                                                  write_table)
    from bioprune.engine.selection.summary import print_summary

    comm = Comm()
    t0 = time.perf_counter()
    n = read_share_count(s.scores, comm)
    # cluster's range is random's: 1..n
    budget = s.budget if s.budget is not None else fraction_budget("random", s.fraction, n)
    if not 1 <= budget <= n:
        raise SelectionError(f"budget {budget} out of range 1..{n} for cluster")
    corpus = _open_corpus(s, n, comm)
    indices, report, err = None, None, None
    if comm.rank == 0:
        try:
            rep, info = cluster_table(s, corpus)
            indices, report = select_from_clusters(rep, budget, s.seed, info)
            report.update(scores_dir=str(Path(s.scores).absolute()), world_size=comm.world,
                          timings_s={"total": round(time.perf_counter() - t0, 4)})
            if s.fraction is not None:
                report["fraction"] = s.fraction
            report["fasta"], report["table"], report["clusters_table"] = FASTA, TABLE, CLUSTERS

            def write(stage):
                write_outputs(stage, indices, report, plot=False)
                write_fasta(corpus, indices, stage / FASTA)
                write_table(corpus, indices, None, report, stage / TABLE)
                write_cluster_table(stage / CLUSTERS, rep, corpus)

            write_unit(s, identity, write)   # --out locked; replaces the old set as one unit
            print(f"selected {len(indices):,} of {n:,} (cluster, {report['clusters']:,} MMseqs2 "
                  f"clusters) -> {Path(s.out) / 'coreset.npy'}", flush=True)
            print_summary(report)     # the scores were not used: no score lines
        except UsageError as e:        # --out taken meanwhile: by a lock or another selection
            err = str(e)
        except Exception as e:  # noqa: BLE001 - every rank must learn of it
            err = f"cluster selection failed: {e}"
    raise_together(comm, err, SelectionError)
    return SelectionResult(indices=indices, local_indices=indices if indices is not None
                           else np.zeros(0, np.int64), report=report or {})
