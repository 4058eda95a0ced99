"""Start-up of a scoring run, before anything expensive: every flag checked (on every rank, one
line naming flag, value and fix), then either "already finished" or the run directory opened
for this job alone with its identity recorded (:mod:`bioprune.engine.io.run_identity`)."""
from __future__ import annotations

from pathlib import Path

from bioprune.engine.io import run_identity
from bioprune.engine.runtime import distributed, flags
from bioprune.engine.runtime import validate as v
from bioprune.engine.runtime.errors import fail
from bioprune.engine.training.trackers import check_available


def check_score_settings(s) -> None:
    """Each field's own check (declared with it, :func:`flags.check_fields`), then the checks
    that relate several settings or need the model."""
    from bioprune.engine.models.validate import check_model_inputs

    flags.check_fields(s)
    if s.finetune_epochs:
        v.finite("finetune_lr", s.finetune_lr, low=0, low_open=True, what="a learning rate")
    per_step = s.micro_batch_size * distributed.world_size()
    if s.finetune_global_batch and s.finetune_global_batch % per_step:
        fail(f"--finetune-global-batch {s.finetune_global_batch}: not a multiple of "
             f"--micro-batch-size x ranks = {per_step}; pick a multiple of {per_step}")
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


def begin_scoring(s, keys, masks=None) -> Path | None:
    """Check everything; return the scores directory when ``s.out`` already holds this finished
    run (reported, nothing to do), else open the run directory (lock + identity) and None.
    ``masks``: the resolved mask plan (or a function giving it, called once the flags are
    checked), part of the identity so that a default that changes between versions never lets a
    run resume with scores of another estimator."""
    v.checked_together(check_score_settings, s)
    masks = masks() if callable(masks) else masks
    out = Path(s.out).expanduser().absolute()
    config = run_identity.identity(s, keys, extra={"masks": masks} if masks else None)
    if not s.overwrite and run_identity.finished(out, config, "scores/_SUCCESS"):
        if distributed.is_main():
            print(f"already finished: {out / 'scores'} holds the scores of this run; nothing to "
                  "do (pass --overwrite to score again)", flush=True)
        return out / "scores"
    run_identity.open_run(out, config, what="scoring run", overwrite=s.overwrite)
    return None
