"""The scoring run (DESIGN steps 1-3), called by ``launch/score.py`` and the experiment harness:

    corpus ─► D_sub ─► adapt on D_sub (DeepSpeed) ─► parameters ─► Fisher over D_sub ─► damping
           ─► score every sequence ─► RUN/ (DESIGN "Run directory")

Each step is a :class:`bioprune.engine.io.phases.Phase` run by one
:class:`~bioprune.engine.io.phases.PhaseRunner` (skip-if-done, timing, memory peaks, the
manifest, failing on every rank together); where the model, the Fisher and the weights live is
the run's :mod:`~bioprune.engine.influence.placement` (dense or ZeRO-3). A phase whose output is
in the run directory is skipped, so a rerun with the same ``out`` resumes: the adapted model
(``adapted/model.safetensors``), the Fisher (``fisher.safetensors``), every finished score part.
Collective: every rank calls :func:`run_scoring` with the same settings.
"""
from __future__ import annotations

import gc
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bioprune.engine.data.corpus import Corpus
from bioprune.engine.data.sampling import draw_subset, subset_size
from bioprune.engine.influence import diagnostics
from bioprune.engine.influence import damping as dmp
from bioprune.engine.influence.checks import begin_scoring
from bioprune.engine.influence.passes import Scorer, fisher_pass
from bioprune.engine.influence.placement import Params, Placement, WeightStore, placement_for
from bioprune.engine.influence.settings import (REFERENCE_PARAMS, RESULT_KEYS, ScoreSettings,
                                                damping_of, mask_plan)
from bioprune.engine.io import scores as scores_io
from bioprune.engine.io.atomic import save_npy, write_json
from bioprune.engine.io.manifest import Manifest
from bioprune.engine.io.phases import Phase, PhaseRunner
from bioprune.engine.models import ModelBundle, save_model, trainable_parameters
from bioprune.engine.models.inputs import load_model_and_corpus
from bioprune.engine.runtime import distributed, zero3
from bioprune.engine.runtime.collectives import Comm
from bioprune.engine.runtime.errors import fail
from bioprune.engine.training.loop import TrainSettings, export_weights, train


@dataclass
class ScoringRun:
    """What the phases share, set once the corpus is loaded and D_sub drawn."""
    settings: ScoreSettings
    out: Path
    rank: int
    world: int
    placement: Placement
    corpus: Corpus
    max_residues: int
    subset: np.ndarray
    # the model as loaded, then (from the adapt phase on) the adapted model as placed; None only
    # between freeing the one and loading the other
    bundle: ModelBundle | None


@dataclass(frozen=True)
class Loaded:
    """The corpus phase's result."""
    bundle: ModelBundle
    corpus: Corpus
    cache: Path
    max_residues: int


@dataclass(frozen=True)
class Adaptation:
    """What the fine-tune on D_sub recorded (None when there was none: ``--finetune-epochs 0``)."""
    steps: int
    metrics: list[dict]
    sequences: int
    ds_config: str               # the DeepSpeed config's file, as the engine reports it


@dataclass(frozen=True)
class Covered:
    """The parameters the Fisher and scores cover, [(name, parameter)], and those left out
    because no sample gives them a gradient."""
    pattern: str | None
    params: Params
    zero_gradient: list[str]


@dataclass(frozen=True)
class Fisher:
    tensors: dict[str, torch.Tensor]   # whole, or under ZeRO-3 this rank's partitions
    nonzero: int = 0                   # rank 0 of a fresh pass: the file's nonzero coordinates


@dataclass(frozen=True)
class Weights:
    store: WeightStore                 # as the placement holds them
    record: dict                       # damping.resolve's record (λ, threshold, counts)


@dataclass(frozen=True)
class Scored:
    scores_dir: Path
    resumed: set[int]                  # score chunks found finished
    scored_here: int                   # sequences scored by this run (all ranks)


def run_scoring(settings: ScoreSettings) -> Path:
    """Adapt, Fisher and score into ``settings.out``; returns the scores directory."""
    t0 = time.time()
    # all flags checked; --out locked
    finished = begin_scoring(settings, RESULT_KEYS, lambda: mask_plan(settings).describe())
    if finished is not None:
        return finished
    s = settings
    out = Path(s.out).expanduser().absolute()
    rank, world = distributed.rank(), distributed.world_size()
    manifest = Manifest(out / "manifest.json", "score", vars(s), world) if rank == 0 else None
    phases = PhaseRunner(manifest)
    placement = placement_for(zero3.ds_config(s.zero_stage, s.deepspeed_config, s.offload))

    loaded = phases(Phase("corpus", partial(_load, s, out, placement.config),
                          record=partial(_record_corpus, s), items=lambda r: len(r.corpus)))
    subset = phases(Phase("subset", partial(_draw_subset, s, out, len(loaded.corpus)),
                          record=lambda m, d: m.count(subset=len(d)), timed=False))
    run = ScoringRun(s, out, rank, world, placement, loaded.corpus, loaded.max_residues, subset,
                     loaded.bundle)
    del loaded                         # the model as loaded is freed before the adapted one loads
    adapted = out / "adapted"
    phases(Phase("adapt", partial(_adapt, run), done=(adapted / "model.safetensors").exists,
                 resume=partial(_load_adapted, run), record=_record_adapt,
                 items=lambda a: a.sequences if a else None, timed=s.finetune_epochs > 0,
                 peak=True))
    covered = phases(Phase("parameters", partial(_covered_parameters, run),
                           record=partial(_record_parameters, run), timed=False))
    fisher_file = out / "fisher.safetensors"
    fisher = phases(Phase("fisher", partial(_fisher, run, covered.params, fisher_file),
                          done=fisher_file.exists,
                          resume=partial(_read_fisher, run, covered.params, fisher_file),
                          record=lambda m, f: m.count(fisher_nonzero=f.nonzero),
                          items=lambda _: len(run.subset), peak=True))
    weights = phases(Phase("damping", partial(_weights, run, fisher.tensors),
                           record=_record_damping, timed=False))
    del fisher                         # the weights are all the scores need
    scored = phases(Phase("score", partial(_score_all, run, covered.params, weights.store),
                          items=lambda r: r.scored_here, peak=True))
    _finish(run, phases, scored, t0)
    return scored.scores_dir


# ---- corpus, D_sub ------------------------------------------------------------------------------
def _load(s: ScoreSettings, out: Path, zero_config: dict) -> Loaded:
    return Loaded(*load_model_and_corpus(s, s.seed, out, zero_config))


def _record_corpus(s: ScoreSettings, m: Manifest, loaded: Loaded) -> None:
    corpus, max_res = loaded.corpus, loaded.max_residues
    m.set("corpus", {"paths": s.data, "molecule": loaded.bundle.molecule, "column": s.column,
                     "id_column": s.id_column, "cache_dir": str(loaded.cache),
                     "stats": corpus.stats, "content_digest": corpus.content_digest()})
    m.count(sequences=len(corpus), cropped=int((corpus.lengths > max_res).sum()),
            max_residues=max_res, rejected_records=int(corpus.stats.get("rejected", 0)))


def _draw_subset(s: ScoreSettings, out: Path, n: int) -> np.ndarray:
    try:
        m = subset_size(n, s.subset_size, s.subset_fraction)
    except ValueError as e:
        fail(str(e))
    subset = draw_subset(n, m, s.seed)
    if distributed.rank() == 0:
        save_npy(out / "subset.npy", subset)
    return subset


# ---- adapt ------------------------------------------------------------------------------------
def _adapt(run: ScoringRun) -> Adaptation | None:
    """Assumption 1: fine-tune on D_sub into RUN/adapted/ (with ``--finetune-epochs 0`` the given
    model is the scored one); then load the adapted model, the one every later phase scores."""
    adapted_dir = run.out / "adapted"
    if run.settings.finetune_epochs > 0:
        adaptation = _finetune(run, adapted_dir)
    else:
        save_model(run.bundle, adapted_dir)
        adaptation = None
    distributed.barrier()
    _load_adapted(run)
    return adaptation


def _load_adapted(run: ScoringRun) -> None:
    """The adapted model, placed (and with --offload cpu, offloaded) as adaptation was."""
    run.bundle = None                 # the model as loaded, or as trained: freed before reloading
    gc.collect()
    run.bundle = run.placement.load(run.out / "adapted")


def _finetune(run: ScoringRun, adapted_dir: Path) -> Adaptation:
    s = run.settings
    per_step = s.micro_batch_size * run.world
    glob = s.finetune_global_batch or per_step
    if glob % per_step:
        fail(f"--finetune-global-batch {glob} is not a multiple of micro-batch x ranks "
             f"= {per_step}")
    settings = TrainSettings(
        lr=s.finetune_lr, weight_decay=0.01, warmup_steps=s.finetune_warmup,
        schedule="constant", epochs=s.finetune_epochs, micro_batch_size=s.micro_batch_size,
        seed=s.seed, max_residues=run.max_residues, zero_stage=s.zero_stage,
        ds_config=s.deepspeed_config, grad_accum=glob // per_step, offload=s.offload)
    result = train(run.bundle, run.corpus, run.subset, settings,
                   checkpoint_dir=run.out / "adapt_checkpoints", report_to=s.report_to,
                   run_dir=run.out, progress_desc="adapt")
    engine = result.pop("engine")
    export_weights(engine, run.bundle, adapted_dir)
    distributed.barrier()    # every rank is past the export before its checkpoints go
    if not s.keep_adapt_checkpoints and run.rank == 0:
        # a rerun resumes from adapted/; the optimizer state is most of the run's bytes
        shutil.rmtree(run.out / "adapt_checkpoints", ignore_errors=True)
    adaptation = Adaptation(result["steps"], result["metrics"], result["sequences"],
                            engine.bioprune_config_source)
    zero3.destroy_engine(engine)   # its optimizer state must be gone before the Fisher pass
    return adaptation


def _record_adapt(m: Manifest, adaptation: Adaptation | None) -> None:
    if adaptation is not None:
        m.set("adapt", {"steps": adaptation.steps, "metrics": adaptation.metrics,
                        "ds_config": adaptation.ds_config})


# ---- parameters, Fisher, damping ----------------------------------------------------------------
def _covered_parameters(run: ScoringRun) -> Covered:
    s = run.settings
    pattern = REFERENCE_PARAMS if s.preset == "reference" else s.params
    params, zero = dmp.covered_parameters(run.bundle.module,
                                          trainable_parameters(run.bundle.module, pattern))
    if not params:
        fail(f"--params {pattern!r} matches no trainable parameter with a gradient")
    return Covered(pattern, params, zero)


def _record_parameters(run: ScoringRun, m: Manifest, covered: Covered) -> None:
    module = run.bundle.module
    named = dict(module.named_parameters())
    total = sum(zero3.full_numel(p) for _, p in trainable_parameters(module))
    m.set("parameters", {
        "pattern": covered.pattern, "tensors": len(covered.params),
        "covered": sum(zero3.full_numel(p) for _, p in covered.params), "total": total,
        "zero_gradient": {"names": covered.zero_gradient,
                          "count": sum(zero3.full_numel(named[n]) for n in covered.zero_gradient)},
        "names": [nm for nm, _ in covered.params]})
    m.set("masks", mask_plan(run.settings).describe())


def _pass_batch(s: ScoreSettings) -> int:
    """Sequences per Fisher/score batch: micro-batch rows hold micro-batch / K sequences of K
    masked copies each (memory as for micro-batch single-mask rows; scores do not depend on it)."""
    return max(1, s.micro_batch_size // mask_plan(s).copies)


def _kernel_options(s: ScoreSettings) -> dict:
    return {"backend": None if s.backend == "auto" else s.backend,
            "autocast_dtype": torch.bfloat16 if s.precision == "bf16" else None}


def _shapes(params: Params) -> dict[str, tuple[int, ...]]:
    return {nm: tuple(zero3.full_shape(p)) for nm, p in params}


def _fisher(run: ScoringRun, params: Params, path: Path) -> Fisher:
    """The diagonal Fisher over D_sub, written to ``path`` (RUN/fisher.safetensors): {name: F}
    whole, or under ZeRO-3 {name: this rank's partition of F} (its elements inside the tensor)."""
    s, device = run.settings, distributed.device()
    store = run.placement.fisher_store(params, device)
    mine = run.subset[run.rank::run.world]
    bar = tqdm(total=len(mine), desc="fisher", unit="seq", disable=run.rank != 0,
               dynamic_ncols=True)
    computed = fisher_pass(run.bundle, run.corpus, mine, params, seed=s.seed,
                           max_residues=run.max_residues, micro_batch_size=_pass_batch(s),
                           device=device, progress=bar, masks=mask_plan(s), store=store,
                           **_kernel_options(s))
    bar.close()
    meta = {"subset_size": str(len(run.subset)), "seed": str(s.seed)}
    nonzero = run.placement.save_fisher(path, _shapes(params), store, meta)
    distributed.barrier()
    return Fisher(run.placement.fisher_tensors(store, computed), nonzero)


def _read_fisher(run: ScoringRun, params: Params, path: Path) -> Fisher:
    return Fisher(run.placement.read_fisher(path, params, _shapes(params)))


def _weights(run: ScoringRun, fisher: dict[str, torch.Tensor]) -> Weights:
    """w = 1/(F + λ) for the scoring pass (``damping.influence_weights``) and the damping's
    record. Under ZeRO-3 each rank turns its Fisher partitions into weight partitions (λ from
    statistics summed over the ranks) held as partitioned parameters."""
    damping, allreduce = damping_of(run.settings), run.placement.damping_allreduce()
    record = dmp.resolve(fisher, damping, allreduce)
    weights = dmp.influence_weights(fisher, damping, distributed.device(), allreduce)
    return Weights(run.placement.weight_store(weights, run.bundle.module), record)


def _record_damping(m: Manifest, weights: Weights) -> None:
    record = weights.record
    m.set("damping", {k: record[k] for k in ("mode", "alpha", "lambda", "exclude_below",
                                             "threshold", "fisher_mean")})
    m.count(covered_parameters=int(record["included"] + record["excluded"]),
            included_coordinates=int(record["included"]),
            excluded_coordinates=int(record["excluded"]))


# ---- scores -------------------------------------------------------------------------------------
def _score_all(run: ScoringRun, params: Params, weights: WeightStore) -> Scored:
    """I(z) for every sequence, data-parallel in fixed chunks of corpus indices (one part file
    per chunk; finished parts are kept and skipped). Under ZeRO-3 the ranks score in step."""
    s, n, device = run.settings, len(run.corpus), distributed.device()
    groups = diagnostics.parameter_groups(run.bundle.module, params)
    mass_dir = run.out / "diagnostics"
    mass_dir.mkdir(parents=True, exist_ok=True)
    scores_dir = run.out / "scores"
    scores_dir.mkdir(parents=True, exist_ok=True)
    n_chunks = math.ceil(n / s.chunk_size)
    resumed = scores_io.finished_chunks(scores_dir) - _damaged_parts(run, scores_dir, mass_dir)
    todo = [c for c in range(n_chunks) if c % run.world == run.rank and c not in resumed]
    chunks = [(c, np.arange(c * s.chunk_size, min(n, (c + 1) * s.chunk_size), dtype=np.int64))
              for c in todo]
    n_mine = sum(len(idx) for _, idx in chunks)
    sources = [Path(p.split("::")[0]).name + (f"::{p.split('::')[1]}" if "::" in p else "")
               for p in run.corpus.paths]
    bar = tqdm(total=n_mine, desc="score", unit="seq", disable=run.rank != 0, dynamic_ncols=True)
    with Scorer(run.bundle, params, weights, seed=s.seed, max_residues=run.max_residues,
                device=device, masks=mask_plan(s), groups=groups, **_kernel_options(s)) as scorer:
        for c, cols, mass in scorer.score_chunks(run.corpus, chunks, _pass_batch(s), bar,
                                                 lockstep=run.placement.lockstep):
            # the chunk's score mass per parameter group, before its part (resume keys on parts)
            write_json(mass_dir / f"mass-{c:06d}.json", mass)
            index = np.asarray(cols["index"], dtype=np.int64)
            scores_io.write_part(scores_dir, c, **cols, **_join_columns(run, index, sources))
    bar.close()
    return Scored(scores_dir, resumed, Comm().sum_int(n_mine))


def _damaged_parts(run: ScoringRun, scores_dir: Path, mass_dir: Path) -> set[int]:
    """The finished-looking parts whose footer does not check out, deleted to be scored again;
    each rank checks the chunks it owns, and every rank gets the whole set."""
    s, n = run.settings, len(run.corpus)
    damaged = []
    for c in sorted(scores_io.finished_chunks(scores_dir)):
        if c % run.world != run.rank:
            continue
        path = scores_io.part_path(scores_dir, c)
        why = scores_io.part_problem(path, c * s.chunk_size, min(n, (c + 1) * s.chunk_size))
        if why is not None:
            print(f"score part {path.name} is damaged ({why}): deleted, scoring chunk {c} again",
                  file=sys.stderr, flush=True)
            path.unlink(missing_ok=True)
            (mass_dir / f"mass-{c:06d}.json").unlink(missing_ok=True)
            damaged.append(c)
    return {c for part in Comm().allgather_object(damaged) for c in part}


def _join_columns(run: ScoringRun, index: np.ndarray, sources: list[str]) -> dict:
    """The score part's columns for users' joins: record id, membership of D_sub, input file."""
    return {"ids": [run.corpus.record_id(int(i)) for i in index],
            "in_subset": np.isin(index, run.subset),
            "source": run.corpus.file_of(index), "source_names": sources}


def _finish(run: ScoringRun, phases: PhaseRunner, scored: Scored, t0: float) -> None:
    """Rank 0 checks that every part is there and adds up to the corpus, then writes _SUCCESS."""
    distributed.barrier()
    if run.rank != 0:
        return
    scores_dir = scored.scores_dir
    n, n_chunks = len(run.corpus), math.ceil(len(run.corpus) / run.settings.chunk_size)
    lost = sorted(set(range(n_chunks)) - scores_io.finished_chunks(scores_dir))
    if lost:
        fail(f"score parts missing for chunks {lost[:10]}; rerun with the same --out")
    rows = sum(scores_io.part_rows(scores_io.part_path(scores_dir, c)) for c in range(n_chunks))
    if rows != n:
        fail(f"score parts hold {rows} rows for a corpus of {n}: delete {scores_dir} and rerun")
    scores_io.write_success(scores_dir, rows)
    m = phases.manifest
    _diagnostics(run, m, scores_dir, n_chunks)
    m.count(scored=rows, resumed_chunks=len(scored.resumed), scored_this_run=scored.scored_here)
    m.timing("total", time.time() - t0)
    m.set("zero", {"stage": run.settings.zero_stage, "offload": run.settings.offload,
                   "partitioned": run.placement.partitioned, "world_size": run.world,
                   "peak_memory_mb_per_rank": phases.peaks})
    m.save("finished")
    print(f"scored {rows} sequences ({len(scored.resumed)} of {n_chunks} parts resumed) -> "
          f"{scores_dir}", flush=True)
    for line in diagnostics.summary_lines(m.data.get("score_contributions") or {},
                                          float(m.data.get("length_spearman") or 0.0)):
        print(line, flush=True)


def _diagnostics(run: ScoringRun, m: Manifest, scores_dir: Path, n_chunks: int) -> None:
    """score_contributions (summed over the chunks' mass files) and length_spearman."""
    mass: dict[str, float] = {}
    for c in range(n_chunks):
        path = run.out / "diagnostics" / f"mass-{c:06d}.json"
        if path.exists():
            diagnostics.add_mass(mass, json.loads(path.read_text()))
    m.set("score_contributions", diagnostics.contributions(mass))
    m.set("length_spearman", diagnostics.length_spearman(scores_dir))
