"""Start-up of a pretraining run: every flag checked before the model, the corpus or DeepSpeed
is touched; the run identity includes a SHA-256 of the training indices, so another coreset into
the same --out is refused (not silently resumed from the other's checkpoint); a finished run
reports that it is finished."""
from __future__ import annotations

import json
from pathlib import Path

from bioprune.engine.io import run_identity
from bioprune.engine.runtime import distributed, flags
from bioprune.engine.runtime import validate as v
from bioprune.engine.runtime.errors import fail
from bioprune.engine.training.trackers import check_available


def check_pretrain_settings(s) -> None:
    """Each field's own check (declared with it, :func:`flags.check_fields`), then those that
    read the index file or relate several settings."""
    from bioprune.engine.models.validate import check_model_inputs

    flags.check_fields(s)
    if s.indices is not None:
        run_identity.indices_digest(s.indices)
    v.offload(s.offload, s.zero_stage)
    check_available(s.report_to)   # a missing wandb / mlflow stops here, not after the corpus
    check_model_inputs(s)


def begin_pretraining(s) -> Path | None:
    """Check everything; return OUT/final when this run is already finished (reported), else
    open --out (lock + identity; another coreset is refused) and return None."""
    v.checked_together(check_pretrain_settings, s)
    out = Path(s.out).expanduser().absolute()
    indices = run_identity.indices_digest(s.indices) if s.indices else "all"
    if isinstance(indices, dict):
        indices = {k: indices[k] for k in ("count", "sha256")}
    config = run_identity.identity(s, flags.identity_keys(type(s)), extra={"indices": indices})
    if not s.overwrite and run_identity.finished(out, config, "final/model.safetensors",
                                                 {"epochs": s.epochs, "steps": s.steps}):
        if distributed.is_main():
            print(f"already finished: {out / 'final'} ({_summary(out)}); nothing to do (pass "
                  "--epochs/--steps beyond it to train on, or --overwrite to start afresh)",
                  flush=True)
        return out / "final"
    run_identity.open_run(out, config, what="pretraining run", overwrite=s.overwrite)
    refuse_fewer_steps(out, s.steps)
    return None


def refuse_fewer_steps(out: Path, steps: int | None) -> None:
    """--steps may grow, not shrink below the checkpoint (its weights are past that step).
    Checked before manifest.json is rewritten; train() checks again after loading (--epochs,
    and checkpoints without a progress file)."""
    from bioprune.engine.training.loop import checkpoint_step

    done = checkpoint_step(out / "checkpoints")
    if steps and done is not None and done > steps:
        fail(f"{out} holds a run checkpointed at step {done}, past --steps {steps}; pass "
             "--steps at least as large to go on, or --overwrite to start afresh")


def _summary(out: Path) -> str:
    try:
        m = json.loads((out / "manifest.json").read_text())
        last = (m.get("metrics") or [{}])[-1]
        text = f"{m['counts'].get('steps')} steps"
        if last.get("heldout_loss") not in (None, ""):
            text += f", held-out loss {float(last['heldout_loss']):.4f}"
        return text
    except (OSError, ValueError, KeyError, TypeError):
        return "see manifest.json"
