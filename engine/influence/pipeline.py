"""The scoring run (DESIGN steps 1-3), called by ``launch/score.py`` and the experiment harness:

    corpus ─► D_sub ─► adapt on D_sub (DeepSpeed) ─► Fisher over D_sub ─► score every sequence
           ─► RUN/ (DESIGN "Run directory")

Each phase keeps its output in the run directory and is skipped when it is already there, so a
rerun with the same ``out`` resumes (the adapted model, the Fisher, every finished score part).
Collective: every rank calls :func:`run_scoring` with the same settings.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bioprune.engine.data.batching import MaskPlan
from bioprune.engine.influence.checks import begin_scoring
from bioprune.engine.influence.damping import DEFAULT_ALPHA, DEFAULT_EXCLUDE_BELOW, Damping
from bioprune.engine.io.atomic import atomic_path, save_npy, write_json
from bioprune.engine.io.manifest import Manifest
from bioprune.engine.models.inputs import ModelInputs, load_model_and_corpus
from bioprune.engine.runtime import distributed
from bioprune.engine.runtime import validate
from bioprune.engine.runtime.errors import fail
from bioprune.engine.runtime.flags import (Flag, at_least, finite, identity_keys, run_only_keys,
                                           setting)
from bioprune.engine.runtime.run_flags import DEEPSPEED_CONFIG, OFFLOAD, ZERO_STAGE
from bioprune.engine.training.trackers import report_to_flag

# ℓ(z) = mean MLM loss over one mask cover of 4 masks of 25 %, every chosen residue the mask
# token: as stable as 28 training-style masks at 4 passes (README "Which score estimator")
DEFAULT_MASK_COVER = 1
DEFAULT_COVER_RATE = 0.25
CORRUPTIONS = ("mask", "bert")   # the mask token only, or training's 80/10/10
# --preset reference: the public reference code's recipe (one LM-head matrix, absolute 1e-8,
# one random mask, nothing excluded), to compare with the paper
REFERENCE_PARAMS = r"(^|\.)(lm_head\.dense|sequence_head\.0)\.weight$"
PRESETS = ("reference",)


GROUP = "influence"


# Every flag of score.py is declared here, once (runtime.flags). The field order is the order of
# the run identity's keys in run_config.json, so an identity field keeps its place (existing runs
# resume byte for byte); run-only fields sit where they read best in --help.
@dataclass
class ScoreSettings(ModelInputs):
    subset_size: int | None = setting(None, identity=True, check=at_least(1), flag=Flag(
        type=int, group=GROUP, exclusive="subset",
        help="M, the size of D_sub (paper: 200000); default: the whole corpus"))
    subset_fraction: float | None = setting(None, identity=True, check=finite(
        low=0, high=1, low_open=True, what="a fraction of the corpus"), flag=Flag(
        type=float, group=GROUP, exclusive="subset",
        help="D_sub as a fraction of the corpus instead of --subset-size"))
    finetune_epochs: int = setting(1, identity=True, check=at_least(0), flag=Flag(
        type=int, group=GROUP,
        help="epochs of MLM adaptation on D_sub before the Fisher; 0 = the paper's 'w/o ft' "
             "ablation (score the given weights as they are)"))
    # checked only when there is an adaptation (checks.py)
    finetune_lr: float = setting(1e-5, identity=True, flag=Flag(
        type=float, group=GROUP, help="adaptation AdamW learning rate"))
    finetune_warmup: int = setting(50, identity=True, check=at_least(0), flag=Flag(
        type=int, group=GROUP, help="adaptation linear warm-up steps"))
    finetune_global_batch: int | None = setting(None, identity=True, check=at_least(1), flag=Flag(
        type=int, group=GROUP,
        help="sequences per adaptation step over all ranks (a multiple of micro-batch x ranks; "
             "the rest is gradient accumulation). Fixing it makes the adapted model, so the "
             "scores, the same on any number of ranks. Default: micro-batch x ranks"))
    # else deleted once adapted/ is exported
    keep_adapt_checkpoints: bool = setting(False, identity=False, flag=Flag(
        action="store_true", group=GROUP,
        help="keep RUN/adapt_checkpoints/ (the adaptation's DeepSpeed checkpoints, mostly "
             "optimizer state) after the adapted model is exported; by default they are deleted "
             "then, as a rerun resumes from RUN/adapted/"))
    params: str | None = setting(None, identity=True, check=validate.regex, flag=Flag(
        metavar="REGEX", group=GROUP,
        help="cover only parameters whose name matches this regex (default: every trainable "
             "parameter; tied parameters count once)"))
    # absolute λ; None: relative, λ = damping_alpha·mean(F)
    damping: float | None = setting(None, identity=True, check=finite(
        low=0, low_open=True,
        what="λ, added to the Fisher: 0 or less divides by zero, inf zeroes every score"),
        flag=Flag(type=float, metavar="LAMBDA", group=GROUP, exclusive="damping",
                  help="absolute damping λ instead (the public reference code: 1e-8)"))
    seed: int = setting(0, identity=True, check=at_least(0), flag=Flag(
        type=int, group=GROUP,
        help="fixes D_sub, crops and masks (as functions of seed and corpus index)"))
    micro_batch_size: int = setting(16, identity=False, check=at_least(1), flag=Flag(
        type=int, group=GROUP,
        help="sequences per batch per rank; the Fisher and scoring passes take micro-batch / K "
             "sequences of K masked copies each (memory as for micro-batch single-mask rows)"))
    chunk_size: int = setting(4096, identity=True, check=at_least(1), flag=Flag(
        type=int, group=GROUP,
        help="corpus indices per score part (the unit of resume and of work sharing)"))
    precision: str = setting("fp32", identity=True, flag=Flag(
        choices=("fp32", "bf16"), group=GROUP,
        help="autocast dtype of the Fisher/scoring forward passes (bf16 on GPUs only)"))
    damping_alpha: float = setting(DEFAULT_ALPHA, identity=True, check=finite(
        low=0, low_open=True, what="relative damping, λ = alpha · mean(F)"), flag=Flag(
        type=float, metavar="ALPHA", group=GROUP, exclusive="damping",
        help="relative damping (the default): λ = ALPHA · mean(F) over the covered parameters"))
    # τ: F ≤ τ·mean(F) is excluded
    exclude_below: float | None = setting(DEFAULT_EXCLUDE_BELOW, identity=True, check=finite(
        low=0, what="relative exclusion threshold, F <= tau · mean(F)"), flag=Flag(
        type=float, metavar="TAU", group=GROUP,
        help="coordinates with Fisher F <= TAU · mean(F) (not estimated by D_sub: positions "
             "beyond its lengths, absent residues) get weight 0 and are counted in the manifest; "
             "0 excludes exact zeros only"))
    # K random masks per sample (exclusive with mask_cover)
    mask_draws: int | None = setting(None, identity=True, check=at_least(
        1, "{flag} must be >= 1 (got {value})"), flag=Flag(
        type=int, metavar="K", group=GROUP, exclusive="masks",
        help="per-sample loss = mean MLM loss over K random 15%% masks instead (costs K "
             "passes; K = 1 is the single mask of the paper's code)"))
    # C mask covers (default DEFAULT_MASK_COVER)
    mask_cover: int | None = setting(None, identity=True, check=at_least(
        1, "{flag} must be >= 1 (got {value})"), flag=Flag(
        type=int, metavar="C", group=GROUP, exclusive="masks",
        help="per-sample loss = mean MLM loss over C mask covers, each a random partition of "
             "the residues into P = 1/R masks of --mask-rate R (costs P·C passes; default: 1 "
             "cover of 4 masks of 25%%, as stable as 28 masks of 15%%, see README 'Which score "
             "estimator')"))
    # default: seed
    mask_seed: int | None = setting(None, identity=True, check=at_least(0), flag=Flag(
        type=int, group=GROUP,
        help="seed of the scoring masks, which are functions of (mask seed, corpus index, k); "
             "default: --seed"))
    # "mean" of the copies' gradients, or "cross" term
    mask_estimator: str = setting("mean", identity=True, flag=Flag(
        choices=("mean", "cross"), group=GROUP,
        help="mean: the score is the weighted squared norm of the mean of the K copies' "
             "gradients (noise of one mask shrinks only as 1/K); cross: the unbiased cross-term "
             "over pairs of copies, (|Σg_k|² − Σ|g_k|²)/(K(K−1)), an estimate of |E_m g|² "
             "without that noise (needs K >= 2; same passes, one more kernel reduction per "
             "layer)"))
    # share of residues a mask hides (draws 0.15, covers DEFAULT_COVER_RATE: a cover is
    # round(1/rate) masks)
    mask_rate: float | None = setting(None, identity=True, flag=Flag(
        type=float, metavar="R", group=GROUP,
        help="the share of residues each mask hides: with --mask-draws default 0.15 (the MLM "
             "rate); with covers default 0.25 (4 masks a cover; 0.15 gives the 7 masks of "
             "earlier versions)"))
    # ℓ = CE of every residue of the unmasked sequence
    unmasked_loss: bool = setting(False, identity=True, flag=Flag(
        action="store_true", group=GROUP, exclusive="masks",
        help="per-sample loss = cross-entropy of every residue given the whole, unmasked "
             "sequence (one deterministic pass, no mask noise; the wild-type marginal of variant "
             "scoring)"))
    # CORRUPTIONS: what a chosen residue becomes
    mask_corruption: str = setting("mask", identity=True, flag=Flag(
        choices=CORRUPTIONS, group=GROUP,
        help="what a masked residue becomes: mask = the mask token (default; removes the noise "
             "of random and kept residues), bert = training's 80%% mask token / 10%% random "
             "residue / 10%% kept"))
    preset: str | None = setting(None, identity=True, flag=Flag(
        choices=PRESETS, group=GROUP,
        help="reference: the public reference code's recipe, to compare with the paper — only "
             "the LM head's dense weight (lm_head.dense.weight), absolute λ = 1e-8, one random "
             "mask, nothing excluded (overrides --params/--damping*/--mask-*/--exclude-below)"))
    backend: str = setting("auto", identity=False, check=lambda _name, value: validate.backend(
        value), flag=Flag(
        choices=("auto", "triton", "torch"), group=GROUP,
        help="per-sample reduction kernels: Triton on CUDA, PyTorch elsewhere by default"))
    # changes no result: a resume may change it
    report_to: str = setting("tensorboard", identity=False, flag=report_to_flag(
        "the adaptation fine-tune (stage adapt)"))
    out: str = setting("runs/score", identity=False, check=validate.output_dir, flag=Flag(
        required=True, help="the run directory"))
    zero_stage: int = setting(2, identity=False, flag=ZERO_STAGE)
    offload: str = setting("none", identity=False, flag=OFFLOAD)
    deepspeed_config: str | None = setting(None, identity=False, check=validate.json_file,
                                           flag=DEEPSPEED_CONFIG)


# settings that change results: a rerun into the same out must agree on them; the rest say where
# and how the run runs (molecule / on_invalid are added by run_identity.identity)
RESULT_KEYS = identity_keys(ScoreSettings)
RUN_ONLY_KEYS = run_only_keys(ScoreSettings)


@dataclass
class _Run:
    """What the phases share."""
    settings: ScoreSettings
    out: Path
    rank: int
    world: int
    manifest: Manifest | None
    bundle: object = None
    corpus: object = None
    max_res: int = 0
    subset: np.ndarray | None = None
    resumed: set = None              # score chunks found finished
    score_seconds: float = 0.0       # wall time of the slowest rank's scoring
    scored_here: int = 0             # sequences scored by this run (all ranks)
    zero_config: dict | None = None  # the DeepSpeed config of --zero-stage / --offload
    partitioned: bool = False        # ZeRO-3: model, Fisher and weights partitioned over ranks
    engine: object = None            # ZeRO-3: the engine whose hooks gather layers just in time
    peaks: dict = None               # {phase: [peak memory of each rank]}


def mask_plan(s: ScoreSettings) -> MaskPlan:
    """The masks that define ℓ(z) for Fisher and scores (DESIGN "Per-sample loss"). The flags
    themselves (exclusive, in range, a known corruption) are checked first, by their fields."""
    seed = s.seed if s.mask_seed is None else s.mask_seed
    if s.preset == "reference":
        return MaskPlan(draws=1, seed=seed)
    if s.unmasked_loss:
        if s.mask_rate is not None:
            fail("--mask-rate does not apply to --unmasked-loss (nothing is masked)")
        plan = dict(unmasked=True)
    elif s.mask_draws is not None:
        plan = dict(draws=s.mask_draws)
        if s.mask_rate is not None:
            plan["rate"] = s.mask_rate
    else:
        cover = DEFAULT_MASK_COVER if s.mask_cover is None else s.mask_cover
        plan = dict(covers=cover, rate=DEFAULT_COVER_RATE if s.mask_rate is None else s.mask_rate)
    if not s.unmasked_loss:
        plan["mask_only"] = s.mask_corruption == "mask"
    try:
        return MaskPlan(**plan, seed=seed, estimator=s.mask_estimator)
    except ValueError as e:
        fail(f"masks: {e} (--mask-estimator cross needs --mask-draws 2 or more; --mask-rate is "
             "a share in (0, 1))")


def damping_of(s: ScoreSettings) -> Damping:
    try:
        if s.preset == "reference":
            return Damping("absolute", value=1e-8, exclude_below=None)
        if s.damping is not None:
            return Damping("absolute", value=s.damping, exclude_below=s.exclude_below)
        return Damping("relative", alpha=s.damping_alpha, exclude_below=s.exclude_below)
    except ValueError as e:
        fail(str(e))


def run_scoring(settings: ScoreSettings) -> Path:
    """Adapt, Fisher and score into ``settings.out``; returns the scores directory."""
    t0 = time.time()
    # all flags checked; --out locked
    finished = begin_scoring(settings, RESULT_KEYS, lambda: mask_plan(settings).describe())
    if finished is not None:
        return finished
    run = _start(settings)
    _load_corpus(run)
    _draw_subset(run)
    _adapt(run)
    params = _covered_parameters(run)
    fisher = _fisher(run, params)
    weights = _weights(run, fisher)
    del fisher                       # the weights are all the scores need
    scores_dir = _score_all(run, params, weights)
    _finish(run, scores_dir, t0)
    return scores_dir


def _start(s: ScoreSettings) -> _Run:
    out = Path(s.out).expanduser().absolute()
    from bioprune.engine.runtime import zero3

    rank, world = distributed.rank(), distributed.world_size()
    manifest = Manifest(out / "manifest.json", "score", vars(s), world) if rank == 0 else None
    cfg = zero3.ds_config(s.zero_stage, s.deepspeed_config, s.offload)
    return _Run(s, out, rank, world, manifest, zero_config=cfg,
                partitioned=zero3.stage_of(cfg) == 3, peaks={})


def _peak(run: _Run, phase: str) -> None:
    """Every rank's peak memory during ``phase`` (since the previous call), recorded after it;
    the next phase's peak starts here (collective)."""
    from bioprune.engine.runtime.collectives import Comm
    from bioprune.engine.runtime.zero3 import peak_memory_mb, reset_peak_memory

    mine = peak_memory_mb()
    reset_peak_memory()
    every = Comm().allgather_object(mine)
    run.peaks[phase] = {k: [round(m[k], 1) for m in every] for k in mine}


def _load_corpus(run: _Run) -> None:
    t = time.time()
    s = run.settings
    run.bundle, run.corpus, cache, run.max_res = load_model_and_corpus(s, s.seed, run.out,
                                                                       run.zero_config)
    n = len(run.corpus)
    if run.manifest:
        run.manifest.set("corpus", {"paths": s.data, "molecule": run.bundle.molecule,
                                    "column": s.column, "id_column": s.id_column,
                                    "cache_dir": str(cache), "stats": run.corpus.stats,
                                    "content_digest": run.corpus.content_digest()})
        run.manifest.count(sequences=n, cropped=int((run.corpus.lengths > run.max_res).sum()),
                           max_residues=run.max_res,
                           rejected_records=int(run.corpus.stats.get("rejected", 0)))
        run.manifest.timing("corpus", time.time() - t, n)
        run.manifest.save()


def _draw_subset(run: _Run) -> None:
    from bioprune.engine.data.sampling import draw_subset, subset_size

    s = run.settings
    try:
        m = subset_size(len(run.corpus), s.subset_size, s.subset_fraction)
    except ValueError as e:
        fail(str(e))
    run.subset = draw_subset(len(run.corpus), m, s.seed)
    if run.rank == 0:
        save_npy(run.out / "subset.npy", run.subset)
        run.manifest.count(subset=m)


def _adapt(run: _Run) -> None:
    """Assumption 1: fine-tune on D_sub (skipped when RUN/adapted/ exists); then load the
    adapted model, the one every later phase scores."""
    import gc

    from bioprune.engine.models import load_saved_model, save_model
    from bioprune.engine.runtime import zero3

    s, adapted_dir = run.settings, run.out / "adapted"
    if not (adapted_dir / "model.safetensors").exists():
        t = time.time()
        if s.finetune_epochs > 0:
            _finetune(run, adapted_dir, t)
        else:
            save_model(run.bundle, adapted_dir)  # "w/o ft": the scored model is the given one
        distributed.barrier()
    run.bundle = None                 # the model as loaded, or as trained: freed before reloading
    gc.collect()
    # the Fisher and scoring passes partition (and with --offload cpu, offload) like adaptation
    cfg = run.zero_config
    with zero3.building(cfg):
        run.bundle = load_saved_model(adapted_dir)
    if run.partitioned:
        run.engine = zero3.inference_engine(run.bundle.module, cfg)
    else:
        run.bundle.module.to(distributed.device())
    _peak(run, "adapt")


def _finetune(run: _Run, adapted_dir: Path, t: float) -> None:
    from bioprune.engine.runtime.zero3 import destroy_engine
    from bioprune.engine.training.loop import TrainSettings, export_weights, train

    s = run.settings
    per_step = s.micro_batch_size * run.world
    glob = s.finetune_global_batch or per_step
    if glob % per_step:
        fail(f"--finetune-global-batch {glob} is not a multiple of micro-batch x ranks "
             f"= {per_step}")
    settings = TrainSettings(
        lr=s.finetune_lr, weight_decay=0.01, warmup_steps=s.finetune_warmup,
        schedule="constant", epochs=s.finetune_epochs, micro_batch_size=s.micro_batch_size,
        seed=s.seed, max_residues=run.max_res, zero_stage=s.zero_stage,
        ds_config=s.deepspeed_config, grad_accum=glob // per_step, offload=s.offload)
    result = train(run.bundle, run.corpus, run.subset, settings,
                   checkpoint_dir=run.out / "adapt_checkpoints", report_to=s.report_to,
                   run_dir=run.out, progress_desc="adapt")
    engine = result.pop("engine")
    export_weights(engine, run.bundle, adapted_dir)
    distributed.barrier()    # every rank is past the export before its checkpoints go
    if not s.keep_adapt_checkpoints and run.rank == 0:
        import shutil

        # a rerun resumes from adapted/; the optimizer state is most of the run's bytes
        shutil.rmtree(run.out / "adapt_checkpoints", ignore_errors=True)
    if run.manifest:
        run.manifest.set("adapt", {"steps": result["steps"], "metrics": result["metrics"],
                                   "ds_config": engine.bioprune_config_source})
        run.manifest.timing("adapt", time.time() - t, result["sequences"])
    destroy_engine(engine)   # its optimizer state must be gone before the Fisher pass


def _covered_parameters(run: _Run) -> list:
    from bioprune.engine.influence.damping import covered_parameters
    from bioprune.engine.models import trainable_parameters
    from bioprune.engine.runtime.zero3 import full_numel

    s = run.settings
    pattern = REFERENCE_PARAMS if s.preset == "reference" else s.params
    params, zero = covered_parameters(run.bundle.module,
                                      trainable_parameters(run.bundle.module, pattern))
    if not params:
        fail(f"--params {pattern!r} matches no trainable parameter with a gradient")
    if run.manifest:
        named = dict(run.bundle.module.named_parameters())
        total = sum(full_numel(p) for _, p in trainable_parameters(run.bundle.module))
        run.manifest.set("parameters", {
            "pattern": pattern, "tensors": len(params),
            "covered": sum(full_numel(p) for _, p in params), "total": total,
            "zero_gradient": {"names": zero, "count": sum(full_numel(named[n]) for n in zero)},
            "names": [nm for nm, _ in params]})
        run.manifest.set("masks", mask_plan(s).describe())
        run.manifest.save()
    return params


def _pass_batch(s: ScoreSettings) -> int:
    """Sequences per Fisher/score batch: micro-batch rows hold micro-batch / K sequences of K
    masked copies each (memory as for micro-batch single-mask rows; scores do not depend on it)."""
    return max(1, s.micro_batch_size // mask_plan(s).copies)


def _kernel_options(s: ScoreSettings) -> dict:
    return {"backend": None if s.backend == "auto" else s.backend,
            "autocast_dtype": torch.bfloat16 if s.precision == "bf16" else None}


def _fisher(run: _Run, params) -> dict:
    """The diagonal Fisher over D_sub (RUN/fisher.safetensors, computed when absent): {name: F}
    whole, or under ZeRO-3 {name: this rank's partition of F} (its elements inside the tensor)."""
    from safetensors.torch import load_file
    from tqdm import tqdm

    from bioprune.engine.influence.grad_sample.storage import DenseFisher, PartitionedFisher
    from bioprune.engine.influence.passes import fisher_pass
    from bioprune.engine.runtime.zero3 import full_numel, full_shape, partition_of, read_partition

    s, path, device = run.settings, run.out / "fisher.safetensors", distributed.device()
    shapes = {nm: tuple(full_shape(p)) for nm, p in params}
    if not path.exists():
        t = time.time()
        store = (PartitionedFisher if run.partitioned else DenseFisher)(params, device)
        mine = run.subset[run.rank::run.world]
        bar = tqdm(total=len(mine), desc="fisher", unit="seq", disable=run.rank != 0,
                   dynamic_ncols=True)
        fisher = fisher_pass(run.bundle, run.corpus, mine, params, seed=s.seed,
                             max_residues=run.max_res, micro_batch_size=_pass_batch(s),
                             device=device, progress=bar, masks=mask_plan(s), store=store,
                             **_kernel_options(s))
        bar.close()
        _save_fisher(run, path, shapes, store)
        if run.manifest:
            run.manifest.timing("fisher", time.time() - t, len(run.subset))
            run.manifest.save()
        distributed.barrier()
        _peak(run, "fisher")
        return {nm: store.valid(nm) for nm in shapes} if run.partitioned else fisher
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        missing = [nm for nm in shapes if nm not in f.keys()]
    if missing:
        fail(f"{path} lacks {missing[:3]}: it was made with other --params; delete it")
    _peak(run, "fisher")
    if run.partitioned:   # each rank reads only its partitions
        return {nm: read_partition(path, nm, shapes[nm], partition_of(full_numel(p), run.rank,
                                                                      run.world))
                for nm, p in params}
    fisher = load_file(str(path))
    return {nm: fisher[nm] for nm in shapes}


def _save_fisher(run: _Run, path: Path, shapes: dict, store) -> None:
    """RUN/fisher.safetensors, by rank 0. Under ZeRO-3 each tensor is gathered to rank 0 and
    written before the next is gathered, so no rank holds the whole Fisher."""
    from safetensors.torch import save_file

    from bioprune.engine.io.safetensors_stream import write_streamed
    from bioprune.engine.runtime.zero3 import gather_to_rank0

    meta = {"subset_size": str(len(run.subset)), "seed": str(run.settings.seed)}
    nonzero = 0
    if run.partitioned:
        def whole():
            nonlocal nonzero
            for nm, shape in shapes.items():
                t = gather_to_rank0(store.parts[nm], math.prod(shape), shape)
                if t is not None:
                    nonzero += int((t != 0).sum())
                yield t

        if run.rank == 0:
            write_streamed(path, list(shapes.items()), whole(), metadata=meta)
        else:
            for _ in whole():
                pass
    elif run.rank == 0:
        fisher = store.tensors
        with atomic_path(path) as tmp:
            save_file({k: v.cpu().contiguous() for k, v in fisher.items()}, str(tmp), metadata=meta)
        nonzero = int(sum((f != 0).sum().item() for f in fisher.values()))
    if run.manifest:
        run.manifest.count(fisher_nonzero=nonzero)


def _weights(run: _Run, fisher: dict):
    """w = 1/(F + λ) for the scoring pass (``damping.influence_weights``), with the damping
    record in the manifest. Under ZeRO-3 each rank turns its Fisher partitions into weight
    partitions (λ from statistics summed over the ranks) held as partitioned parameters."""
    from bioprune.engine.influence import damping as dmp
    from bioprune.engine.influence.grad_sample.storage import PartitionedWeights
    from bioprune.engine.runtime.collectives import Comm

    damping, device = damping_of(run.settings), distributed.device()
    allreduce = Comm().allreduce if run.partitioned else None
    record = dmp.resolve(fisher, damping, allreduce)
    if run.manifest:
        run.manifest.set("damping", {k: record[k] for k in ("mode", "alpha", "lambda",
                                                            "exclude_below", "threshold",
                                                            "fisher_mean")})
        run.manifest.count(covered_parameters=int(record["included"] + record["excluded"]),
                           included_coordinates=int(record["included"]),
                           excluded_coordinates=int(record["excluded"]))
        run.manifest.save()
    weights = dmp.influence_weights(fisher, damping, device, allreduce)
    if not run.partitioned:
        return weights
    from bioprune.engine.runtime.zero3 import full_shape

    shapes = {nm: full_shape(p) for nm, p in run.bundle.module.named_parameters()}
    return PartitionedWeights.from_parts(weights, shapes, run.zero_config)


def _score_all(run: _Run, params, weights) -> Path:
    """I(z) for every sequence, data-parallel in fixed chunks of corpus indices (one part file
    per chunk; finished parts are kept and skipped). Under ZeRO-3 the ranks score in step."""
    from tqdm import tqdm

    from bioprune.engine.influence import diagnostics
    from bioprune.engine.influence.passes import Scorer
    from bioprune.engine.io import scores as scores_io

    s, n, device = run.settings, len(run.corpus), distributed.device()
    groups = diagnostics.parameter_groups(run.bundle.module, params)
    mass_dir = run.out / "diagnostics"
    mass_dir.mkdir(parents=True, exist_ok=True)
    scores_dir = run.out / "scores"
    scores_dir.mkdir(parents=True, exist_ok=True)
    n_chunks = math.ceil(n / s.chunk_size)
    run.resumed = scores_io.finished_chunks(scores_dir)
    # a part is trusted only once its footer checks out; each rank checks the chunks it owns
    damaged = []
    for c in sorted(run.resumed):
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
    if run.world > 1:   # every rank's count of resumed parts agrees
        import torch.distributed as dist

        everyone = [None] * run.world
        dist.all_gather_object(everyone, damaged)
        damaged = [c for part in everyone for c in part]
    run.resumed -= set(damaged)
    todo = [c for c in range(n_chunks) if c % run.world == run.rank and c not in run.resumed]
    chunks = [(c, np.arange(c * s.chunk_size, min(n, (c + 1) * s.chunk_size), dtype=np.int64))
              for c in todo]
    t = time.time()
    n_mine = sum(len(idx) for _, idx in chunks)
    sources = [Path(p.split("::")[0]).name + (f"::{p.split('::')[1]}" if "::" in p else "")
               for p in run.corpus.paths]
    bar = tqdm(total=n_mine, desc="score", unit="seq", disable=run.rank != 0, dynamic_ncols=True)
    with Scorer(run.bundle, params, weights, seed=s.seed, max_residues=run.max_res,
                device=device, masks=mask_plan(s), groups=groups, **_kernel_options(s)) as scorer:
        for c, cols, mass in scorer.score_chunks(run.corpus, chunks, _pass_batch(s), bar,
                                                 lockstep=run.partitioned):
            # the chunk's score mass per parameter group, before its part (resume keys on parts)
            write_json(mass_dir / f"mass-{c:06d}.json", mass)
            index = np.asarray(cols["index"], dtype=np.int64)
            scores_io.write_part(scores_dir, c, **cols, **_join_columns(run, index, sources))
    bar.close()
    run.score_seconds, run.scored_here = _slowest_and_total(time.time() - t, n_mine, device)
    _peak(run, "score")
    return scores_dir


def _join_columns(run: _Run, index: np.ndarray, sources: list[str]) -> dict:
    """The score part's columns for users' joins: record id, membership of D_sub, input file."""
    return {"ids": [run.corpus.record_id(int(i)) for i in index],
            "in_subset": np.isin(index, run.subset),
            "source": run.corpus.file_of(index), "source_names": sources}


def _slowest_and_total(seconds: float, count: int, device) -> tuple[float, int]:
    """(wall time of the slowest rank, count summed over ranks)."""
    if distributed.world_size() == 1:
        return seconds, count
    import torch.distributed as dist

    wall = torch.tensor([seconds], dtype=torch.float64, device=device)
    total = torch.tensor([count], dtype=torch.int64, device=device)
    dist.all_reduce(wall, op=dist.ReduceOp.MAX)
    dist.all_reduce(total)
    return float(wall.item()), int(total.item())


def _finish(run: _Run, scores_dir: Path, t0: float) -> None:
    """Rank 0 checks that every part is there and adds up to the corpus, then writes _SUCCESS."""
    from bioprune.engine.io import scores as scores_io

    distributed.barrier()
    if run.rank != 0:
        return
    n, n_chunks = len(run.corpus), math.ceil(len(run.corpus) / run.settings.chunk_size)
    lost = sorted(set(range(n_chunks)) - scores_io.finished_chunks(scores_dir))
    if lost:
        fail(f"score parts missing for chunks {lost[:10]}; rerun with the same --out")
    rows = sum(scores_io.part_rows(scores_io.part_path(scores_dir, c)) for c in range(n_chunks))
    if rows != n:
        fail(f"score parts hold {rows} rows for a corpus of {n}: delete {scores_dir} and rerun")
    scores_io.write_success(scores_dir, rows)
    m = run.manifest
    _diagnostics(run, scores_dir, n_chunks)
    m.count(scored=rows, resumed_chunks=len(run.resumed), scored_this_run=run.scored_here)
    m.timing("score", run.score_seconds, run.scored_here)
    m.timing("total", time.time() - t0)
    m.set("zero", {"stage": run.settings.zero_stage, "offload": run.settings.offload,
                   "partitioned": run.partitioned, "world_size": run.world,
                   "peak_memory_mb_per_rank": run.peaks})
    m.save("finished")
    print(f"scored {rows} sequences ({len(run.resumed)} of {n_chunks} parts resumed) -> "
          f"{scores_dir}", flush=True)
    from bioprune.engine.influence.diagnostics import summary_lines

    for line in summary_lines(m.data.get("score_contributions") or {},
                              float(m.data.get("length_spearman") or 0.0)):
        print(line, flush=True)


def _diagnostics(run: _Run, scores_dir: Path, n_chunks: int) -> None:
    """score_contributions (summed over the chunks' mass files) and length_spearman."""
    import json

    from bioprune.engine.influence import diagnostics

    mass: dict[str, float] = {}
    for c in range(n_chunks):
        path = run.out / "diagnostics" / f"mass-{c:06d}.json"
        if path.exists():
            diagnostics.add_mass(mass, json.loads(path.read_text()))
    run.manifest.set("score_contributions", diagnostics.contributions(mass))
    run.manifest.set("length_spearman", diagnostics.length_spearman(scores_dir))
