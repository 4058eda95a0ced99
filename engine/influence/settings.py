"""The settings of a scoring run (``launch/score.py``'s flags, declared once with
:mod:`bioprune.engine.runtime.flags`) and what follows from them alone: the masks that define the
per-sample loss (:func:`mask_plan`) and the damping (:func:`damping_of`)."""
from __future__ import annotations


from dataclasses import dataclass

from bioprune.engine.data.batching import MaskPlan
from bioprune.engine.influence.damping import DEFAULT_ALPHA, DEFAULT_EXCLUDE_BELOW, Damping
from bioprune.engine.models.inputs import ModelInputs
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
