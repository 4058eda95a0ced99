"""Start-up of a scoring run, before anything expensive: every flag checked (on every rank, one
line naming flag, value and fix), then either "already finished" or the run directory opened
for this job alone with its identity recorded (:mod:`bioprune.engine.io.run_identity`)."""
from __future__ import annotations

from pathlib import Path

from bioprune.engine.io import run_identity
from bioprune.engine.runtime import distributed
from bioprune.engine.runtime import validate as v
from bioprune.engine.runtime.errors import fail
from bioprune.engine.training.trackers import check_available


def check_score_settings(s) -> None:
    from bioprune.engine.models.validate import check_model_inputs

    v.output_dir("out", s.out)
    v.positive_int("subset_size", s.subset_size)
    if s.subset_size is not None and s.subset_fraction is not None:
        fail("give --subset-size or --subset-fraction, not both")
    v.finite("subset_fraction", s.subset_fraction, low=0, high=1, low_open=True,
             what="a fraction of the corpus")
    v.positive_int("finetune_epochs", s.finetune_epochs, minimum=0)
    if s.finetune_epochs:
        v.finite("finetune_lr", s.finetune_lr, low=0, low_open=True, what="a learning rate")
    v.positive_int("finetune_warmup", s.finetune_warmup, minimum=0)
    v.positive_int("micro_batch_size", s.micro_batch_size)
    v.positive_int("chunk_size", s.chunk_size)
    v.positive_int("seed", s.seed, minimum=0)
    v.positive_int("finetune_global_batch", s.finetune_global_batch)
    per_step = s.micro_batch_size * distributed.world_size()
    if s.finetune_global_batch and s.finetune_global_batch % per_step:
        fail(f"--finetune-global-batch {s.finetune_global_batch}: not a multiple of "
             f"--micro-batch-size x ranks = {per_step}; pick a multiple of {per_step}")
    v.regex("params", s.params)
    v.finite("damping", s.damping, low=0, low_open=True,
             what="λ, added to the Fisher: 0 or less divides by zero, inf zeroes every score")
    v.finite("damping_alpha", getattr(s, "damping_alpha", None), low=0, low_open=True,
             what="relative damping, λ = alpha · mean(F)")
    v.finite("exclude_below", getattr(s, "exclude_below", None), low=0,
             what="relative exclusion threshold, F <= tau · mean(F)")
    v.positive_int("mask_draws", getattr(s, "mask_draws", None))
    v.positive_int("mask_cover", getattr(s, "mask_cover", None))
    v.positive_int("mask_seed", getattr(s, "mask_seed", None), minimum=0)
    if getattr(s, "mask_draws", None) is not None and getattr(s, "mask_cover", None) is not None:
        fail("give --mask-draws or --mask-cover, not both")
    if getattr(s, "preset", None) not in (None, "reference"):
        fail(f"--preset {s.preset!r}: unknown; the presets are: reference")
    v.backend(s.backend)
    v.json_file("deepspeed_config", s.deepspeed_config)
    v.offload(s.offload, s.zero_stage)
    check_available(s.report_to)   # a missing wandb / mlflow stops here, before any work
    check_model_inputs(s)
    if s.params:
        check_params_match(s.model, s.model_size, s.params)


def check_params_match(model: str, size: str, pattern: str) -> None:
    """--params must cover something: checked on the architecture built on the meta device (no
    memory, no weights), not after adaptation."""
    import torch

    from bioprune.engine.models import build_model, trainable_parameters

    with torch.device("meta"):
        module = build_model(model, size).module
    if not trainable_parameters(module, pattern):
        names = [n for n, _ in trainable_parameters(module)]
        fail(f"--params {pattern!r} matches no trainable parameter of {model} {size} (names "
             f"look like {', '.join(names[:3])}, ...); fix the pattern")


def begin_scoring(s, keys, masks: dict | None = None) -> Path | None:
    """Check everything; return the scores directory when ``s.out`` already holds this finished
    run (reported, nothing to do), else open the run directory (lock + identity) and None.
    ``masks``: the resolved mask plan, part of the identity so that a default that changes
    between versions never lets a run resume with scores of another estimator."""
    v.checked_together(check_score_settings, s)
    out = Path(s.out).expanduser().absolute()
    config = run_identity.identity(s, keys, extra={"masks": masks} if masks else None)
    if not s.overwrite and run_identity.finished(out, config, "scores/_SUCCESS"):
        if distributed.is_main():
            print(f"already finished: {out / 'scores'} holds the scores of this run; nothing to "
                  "do (pass --overwrite to score again)", flush=True)
        return out / "scores"
    run_identity.open_run(out, config, what="scoring run", overwrite=s.overwrite)
    return None
