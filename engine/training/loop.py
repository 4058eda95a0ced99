"""Masked-language-model training on DeepSpeed: the adaptation step (DESIGN step 1) and
pretraining from scratch on a coreset (step 5) are the same loop with different settings.

Read top to bottom: ``TrainSettings`` → ``make_engine`` (DeepSpeed + ZeRO config from
``ds_configs/``, transformers' LR schedule) → ``train`` (epochs of sharded, deterministic batches;
held-out loss and perplexity; checkpoints and resume) → ``export_weights`` (a plain state dict).
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from bioprune.engine.runtime import distributed, hashing, signals
from bioprune.engine.io.atomic import write_json, write_text
from bioprune.engine.data.batching import IGNORE, make_batch, per_sample_loss
from bioprune.engine.runtime.errors import fail

# next to DeepSpeed's "latest": the step its checkpoint is at, for checks before DeepSpeed is up
PROGRESS = "progress.json"


@dataclass
class TrainSettings:
    lr: float
    weight_decay: float
    warmup_steps: int
    schedule: str            # "constant" (after warm-up) or "inverse_sqrt"
    epochs: int
    micro_batch_size: int
    seed: int
    max_residues: int
    zero_stage: int = 2
    ds_config: str | None = None  # a DeepSpeed JSON; default ds_configs/<device>_zero<stage>_*.json
    grad_accum: int = 1
    max_steps: int | None = None  # stop after this many optimizer steps (compute-matched runs)
    offload: str = "none"         # "cpu": ZeRO-Infinity offload of the stage-3 partitions
    save_steps: int | None = None        # also checkpoint every this many optimizer steps
    save_total_limit: int | None = None  # keep only this many most recent checkpoints


def load_ds_config(settings: TrainSettings) -> dict:
    from bioprune.engine.runtime.zero3 import ds_config

    cfg = ds_config(settings.zero_stage, settings.ds_config, settings.offload)
    path = cfg.pop("_source")
    # The command line owns the batch geometry and the optimiser's hyper-parameters.
    cfg.pop("train_batch_size", None)
    cfg["train_micro_batch_size_per_gpu"] = settings.micro_batch_size
    cfg["gradient_accumulation_steps"] = settings.grad_accum
    opt = cfg.setdefault("optimizer", {"type": "AdamW", "params": {}})
    opt["params"].update(lr=settings.lr, weight_decay=settings.weight_decay)
    if not torch.cuda.is_available():
        opt["params"]["torch_adam"] = True
        cfg.pop("bf16", None)
        cfg.pop("fp16", None)
    cfg["_source"] = str(path)
    return cfg


def make_engine(bundle, settings: TrainSettings):
    import deepspeed
    from transformers import get_constant_schedule_with_warmup, get_inverse_sqrt_schedule

    cfg = load_ds_config(settings)
    source = cfg.pop("_source")

    # Both schedules are functions of the optimizer step alone (neither knows --steps/--epochs):
    # a run extended to more steps follows the same curve as an unbroken run of that length, and
    # the scheduler's step count comes back with the DeepSpeed checkpoint.
    def schedule(optimizer):
        if settings.schedule == "inverse_sqrt":
            return get_inverse_sqrt_schedule(optimizer, num_warmup_steps=settings.warmup_steps)
        return get_constant_schedule_with_warmup(optimizer, num_warmup_steps=settings.warmup_steps)

    params = [p for p in bundle.module.parameters() if p.requires_grad]
    distributed.single_process_env()   # one process: a free port, not DeepSpeed's fixed 29500
    with distributed.port_errors():
        engine, _, _, _ = deepspeed.initialize(
            model=bundle.module, model_parameters=params, config=cfg, lr_scheduler=schedule)
    engine.bioprune_config_source = source
    return engine


def epoch_order(indices: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """The global order of an epoch: sorted by hash(seed·epoch, index), the same on every rank."""
    keys = hashing.hash_keys(seed * 1_000_003 + epoch, indices, hashing.SHUFFLE)
    return np.asarray(indices)[np.lexsort((indices, keys))]


def steps_per_epoch(n: int, micro_batch: int, world: int, grad_accum: int = 1) -> int:
    """Optimizer steps of one epoch over n sequences (the last step is padded, see below)."""
    return max(1, math.ceil(n / (micro_batch * world * grad_accum)))


def epochs_for_steps(steps: int, n: int, micro_batch: int, world: int, grad_accum: int = 1) -> int:
    """Epochs that hold ``steps`` optimizer steps: a small training set is repeated."""
    return math.ceil(steps / steps_per_epoch(n, micro_batch, world, grad_accum))


def rank_batches(indices: np.ndarray, seed: int, epoch: int, micro_batch: int, rank: int,
                 world: int, grad_accum: int = 1):
    """This rank's micro-batches; every rank gets the same count (the order wraps around).

    Optimiser step s covers global positions [s·W·A·b, (s+1)·W·A·b) of the epoch order on any
    number of ranks W (A accumulation steps of b sequences): a run on 2 ranks with A = 1 takes
    the same steps as a run on 1 rank with A = 2.
    """
    order = epoch_order(indices, seed, epoch)
    per_step = micro_batch * world * grad_accum
    steps = steps_per_epoch(len(order), micro_batch, world, grad_accum)
    need = steps * per_step
    if need > len(order):  # like DistributedSampler: pad by repeating from the start
        order = np.concatenate([order, np.resize(order, need - len(order))])
    mine = order[rank::world]
    return [mine[j * micro_batch:(j + 1) * micro_batch] for j in range(steps * grad_accum)]


@torch.no_grad()
def evaluate(engine, bundle, corpus, indices: np.ndarray, settings: TrainSettings) -> dict:
    """Held-out MLM loss (mean per-sample ℓ) and perplexity (exp of the token-level mean CE)."""
    from bioprune.engine.runtime.zero3 import in_lockstep

    rank, world = distributed.rank(), distributed.world_size()
    mine = np.asarray(indices)[rank::world]
    acc = torch.zeros(4, dtype=torch.float64)  # Σ ℓ_b, #samples, Σ token CE, #tokens
    engine.eval()
    chunks = [mine[s:s + settings.micro_batch_size]
              for s in range(0, len(mine), settings.micro_batch_size)]
    # ZeRO-3 gathers parameters in every forward: ranks with fewer batches run filler ones
    for chunk in in_lockstep(chunks, distributed.device(), engine.zero_optimization_stage() == 3):
        b = make_batch(corpus, chunk if chunk is not None else np.asarray(indices[:1]), bundle,
                       settings.seed, settings.max_residues).to(engine.device)
        logits = engine(b.tokens).float()
        if chunk is None:
            continue
        loss = per_sample_loss(logits, b.labels)
        ce = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), b.labels.flatten(), ignore_index=IGNORE, reduction="sum")
        acc += torch.tensor([loss.sum().item(), len(loss), ce.item(),
                             (b.labels != IGNORE).sum().item()], dtype=torch.float64)
    if world > 1:
        acc = acc.to(distributed.device())  # NCCL reduces CUDA tensors only
        dist.all_reduce(acc)
        acc = acc.cpu()
    engine.train()
    loss = acc[0].item() / max(acc[1].item(), 1)
    return {"heldout_loss": loss, "heldout_ppl": math.exp(acc[2].item() / max(acc[3].item(), 1))}


def train(bundle, corpus, indices: np.ndarray, settings: TrainSettings, *, checkpoint_dir=None,
          heldout: np.ndarray | None = None, metrics_csv=None, report_to: str = "none",
          run_dir=None, progress_desc: str = "train") -> dict:
    """Train ``bundle.module`` on ``indices`` of ``corpus``; resume from ``checkpoint_dir``.

    A resumed run takes exactly the steps, on exactly the batches, of an unbroken one: it goes on
    from the checkpoint's optimizer step (an epoch's end, or where an earlier ``max_steps``
    stopped inside an epoch) and skips the batches of that epoch already taken.

    Curves go to the ``report_to`` tracker under ``run_dir`` (:mod:`.trackers`), as stage
    ``progress_desc``: train loss and learning rate per optimizer step, and each epoch's row of
    ``metrics.csv`` at the step that ends it.
    """
    from dataclasses import asdict

    from bioprune.engine.training.trackers import open_tracker

    rank, world = distributed.rank(), distributed.world_size()
    engine = make_engine(bundle, settings)
    per_epoch = steps_per_epoch(len(indices), settings.micro_batch_size, world, settings.grad_accum)
    start = _resume(engine, checkpoint_dir, per_epoch, settings)
    start_step = engine.global_steps
    tracker = open_tracker(report_to if run_dir else "none", run_dir, progress_desc,
                           asdict(settings))
    rows = _read_metrics(metrics_csv) if metrics_csv else []
    if start["train"]:   # the row of an epoch stopped part-way is rewritten when it ends
        rows = [r for r in rows if int(r["epoch"]) < start["epoch"]]
    t0 = time.time()
    seen = [0]
    engine.train()
    try:
        with signals.deferred():   # a SIGTERM waits for the end of the step, then checkpoints
            _epochs(engine, bundle, corpus, indices, settings, start, per_epoch, rows, tracker,
                    checkpoint_dir, heldout, metrics_csv, progress_desc, rank, world, seen)
    finally:   # what was logged up to a signal or an error stays readable
        tracker.close()
    seen = seen[0]
    return {"engine": engine, "metrics": rows, "steps": engine.global_steps,
            "seconds": time.time() - t0, "sequences": seen, "start_epoch": start["epoch"],
            "start_step": start_step}


def _stop_asked(world: int, device) -> int | None:
    """The signal a stop was asked with on any rank (all ranks agree, so they checkpoint at the
    same step), or None."""
    signum = signals.pending() or 0
    if world > 1:
        flag = torch.tensor([signum], dtype=torch.int64, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        signum = int(flag.item())
    return signum or None


def _epochs(engine, bundle, corpus, indices, settings, start, per_epoch, rows, tracker,
            checkpoint_dir, heldout, metrics_csv, progress_desc, rank, world, seen) -> None:
    """The epochs of :func:`train` (``seen[0]`` counts the sequences), checkpointing at each
    epoch's end, every ``save_steps`` and where a signal asks to stop."""
    from tqdm import tqdm

    for epoch in range(start["epoch"], settings.epochs) if start["train"] else ():
        batches = rank_batches(indices, settings.seed, epoch, settings.micro_batch_size, rank,
                               world, settings.grad_accum)
        skip = start["skip"] if epoch == start["epoch"] else 0
        bar = tqdm(batches[skip * settings.grad_accum:], initial=skip * settings.grad_accum,
                   total=len(batches), desc=f"{progress_desc} epoch {epoch + 1}/{settings.epochs}",
                   disable=rank != 0, unit="batch", dynamic_ncols=True)
        # an epoch resumed part-way goes on with the loss of its first part, so its row in
        # metrics.csv is the unbroken run's
        run_loss, n_loss = (start["loss_sum"], start["loss_count"]) if skip else (0.0, 0)
        t_epoch = time.time()
        last_step = engine.global_steps
        step_losses = []   # the micro-batches of the optimizer step under way
        for idx in bar:
            # new masks every epoch: the mask seed moves with the epoch, crops stay put
            b = make_batch(corpus, idx, bundle, settings.seed, settings.max_residues,
                           mask_seed=settings.seed + 7919 * (epoch + 1)).to(engine.device)
            loss = per_sample_loss(engine(b.tokens), b.labels).mean()
            engine.backward(loss)
            engine.step()
            run_loss += loss.item()  # (a mean over micro-batches; a step is grad_accum of them)
            n_loss += 1
            step_losses.append(loss.item())
            seen[0] += len(idx) * world
            if rank == 0:
                bar.set_postfix(loss=f"{run_loss / n_loss:.3f}",
                                seq_s=f"{len(idx) * world * n_loss / (time.time() - t_epoch):.1f}")
            stepped = engine.global_steps != last_step
            if stepped:   # one point per optimizer step: the mean of its micro-batches
                tracker.log({"train/loss": sum(step_losses) / len(step_losses),
                             "train/lr": engine.get_lr()[0]}, engine.global_steps)
                step_losses = []
            if settings.max_steps and engine.global_steps >= settings.max_steps:
                break   # compute-matched: the last epoch stops at the step budget
            if not stepped:
                continue   # inside a gradient accumulation: checkpoints only between steps
            last_step = engine.global_steps
            signum = _stop_asked(world, engine.device)
            if checkpoint_dir and (signum or (settings.save_steps and
                                              engine.global_steps % settings.save_steps == 0)):
                _save_checkpoint(engine, checkpoint_dir, epoch, per_epoch, run_loss, n_loss,
                                 settings.save_total_limit)
            if signum:
                signals.clear_pending()
                if rank == 0:
                    print(f"signal {signum}: checkpointed at step {engine.global_steps} in "
                          f"{checkpoint_dir}", flush=True)
                raise signals.Terminated(signum)
        row = {"epoch": epoch, "step": engine.global_steps, "train_loss": run_loss / max(n_loss, 1),
               "seconds": time.time() - t_epoch}
        if heldout is not None and len(heldout):
            row.update(evaluate(engine, bundle, corpus, heldout, settings))
        rows.append(row)
        # at the step that ends the epoch, on the same axis as train/loss
        tracker.log({f"epoch/{k}": v for k, v in row.items() if k not in ("epoch", "step")},
                    engine.global_steps)
        if rank == 0 and metrics_csv:
            _write_metrics(metrics_csv, rows)
        if checkpoint_dir:
            _save_checkpoint(engine, checkpoint_dir, epoch, per_epoch, run_loss, n_loss,
                             settings.save_total_limit)


def _last_step(settings: TrainSettings, per_epoch: int) -> int:
    """The optimizer step a run with these settings ends at."""
    end = settings.epochs * per_epoch
    return min(end, settings.max_steps) if settings.max_steps else end


def _save_checkpoint(engine, checkpoint_dir, epoch: int, per_epoch: int, loss_sum: float,
                     loss_count: int, keep: int | None = None) -> None:
    """A checkpoint after ``epoch``, or after the part of it taken so far (``max_steps``,
    ``save_steps``, a signal: its own tag, so the epoch's end, when reached, does not overwrite
    it); then only the ``keep`` newest are kept. A step already checkpointed is not saved twice."""
    complete = engine.global_steps == (epoch + 1) * per_epoch
    tag = f"epoch{epoch}" if complete else f"epoch{epoch}-step{engine.global_steps}"
    if (Path(checkpoint_dir) / tag).is_dir() and checkpoint_step(checkpoint_dir) == \
            engine.global_steps:
        return
    engine.save_checkpoint(str(checkpoint_dir), tag=tag, client_state={
        "epoch": epoch, "steps_per_epoch": per_epoch, "loss_sum": loss_sum,
        "loss_count": loss_count})
    if distributed.is_main():
        write_json(Path(checkpoint_dir) / PROGRESS,
                   {"tag": tag, "step": engine.global_steps, "epoch": epoch})
    if keep:
        distributed.barrier()          # every rank's shard of this checkpoint is written
        if distributed.is_main():
            _drop_old_checkpoints(Path(checkpoint_dir), per_epoch, keep, tag)


def _tag_step(tag: str, per_epoch: int) -> int | None:
    """The optimizer step a checkpoint tag stands for (``epochE`` or ``epochE-stepS``)."""
    m = re.fullmatch(r"epoch(\d+)(?:-step(\d+))?", tag)
    if not m:
        return None
    return int(m.group(2)) if m.group(2) else (int(m.group(1)) + 1) * per_epoch


def _drop_old_checkpoints(directory: Path, per_epoch: int, keep: int, newest: str) -> None:
    """Delete all but the ``keep`` most recent checkpoint tags (never ``newest``)."""
    import shutil

    tags = [(step, d.name) for d in directory.iterdir()
            if d.is_dir() and (step := _tag_step(d.name, per_epoch)) is not None]
    tags.sort()
    for _, name in tags[:-keep]:
        if name != newest:
            shutil.rmtree(directory / name, ignore_errors=True)


def checkpoint_step(checkpoint_dir) -> int | None:
    """The optimizer step of the last checkpoint in ``checkpoint_dir``, read without DeepSpeed
    (start-up checks); None when there is none or its progress file is missing or stale."""
    directory = Path(checkpoint_dir)
    try:
        progress = json.loads((directory / PROGRESS).read_text())
        latest = (directory / "latest").read_text().strip()
    except (OSError, ValueError):
        return None
    # written after DeepSpeed's "latest": an interruption between the two leaves it stale
    return int(progress["step"]) if progress.get("tag") == latest else None


def _resume(engine, checkpoint_dir, per_epoch: int, settings: TrainSettings) -> dict:
    """Where training goes on: {"epoch", "skip" (its optimizer steps already taken), "loss_sum",
    "loss_count" (of those steps), "train" (False: the checkpoint is at the end already)}.

    Every epoch has ``per_epoch`` steps and the order of each is a function of (seed, epoch), so
    the restored optimizer step alone says which batch comes next.
    """
    if not (checkpoint_dir and (Path(checkpoint_dir) / "latest").exists()):
        return {"epoch": 0, "skip": 0, "loss_sum": 0.0, "loss_count": 0, "train": True}
    _, client = engine.load_checkpoint(str(checkpoint_dir))
    client = client or {}
    step = engine.global_steps
    epoch, skip = divmod(step, per_epoch)
    _check_geometry(checkpoint_dir, client, step, per_epoch)
    last = _last_step(settings, per_epoch)
    if step > last:
        fail(f"{checkpoint_dir} is at optimizer step {step}, past the {last} steps these "
             f"settings train for; ask for at least {step} steps, or --overwrite to start afresh")
    carried = skip > 0 and int(client.get("epoch", -1)) == epoch
    return {"epoch": epoch, "skip": skip, "train": step < last,
            "loss_sum": float(client.get("loss_sum", 0.0)) if carried else 0.0,
            "loss_count": int(client.get("loss_count", 0)) if carried else 0}


def _check_geometry(checkpoint_dir, client: dict, step: int, per_epoch: int) -> None:
    """Refuse a checkpoint whose epochs had another number of steps (another number of ranks):
    its step count would point to the wrong place in the data order."""
    recorded = client.get("steps_per_epoch")
    epoch = client.get("epoch")
    inside = epoch is None or int(epoch) * per_epoch < step <= (int(epoch) + 1) * per_epoch
    if (recorded is not None and int(recorded) != per_epoch) or not inside:
        fail(f"{checkpoint_dir}: the checkpoint (epoch {epoch}, step {step}) was made with "
             f"{recorded or 'another number of'} steps per epoch, this run has {per_epoch} "
             "(another number of ranks?); resume on the same ranks, or --overwrite")


def export_weights(engine, bundle, directory) -> Path | None:
    """Write the trained weights as a plain state dict (``model.safetensors`` + ``config.json``).

    Under ZeRO-3 the parameters are gathered to rank 0 one module at a time (no other rank ever
    holds the whole model). Every rank must call this.
    """
    from bioprune.engine.models import save_state
    from bioprune.engine.models.checkpoint import state_on_rank0

    state = state_on_rank0(engine.module) if (distributed.is_main()
                                              or engine.zero_optimization_stage() == 3) else None
    out = save_state(state, bundle.config, directory, bundle) if distributed.is_main() else None
    del state
    distributed.barrier()
    return out


def _read_metrics(path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def _write_metrics(path, rows: list[dict]) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    write_text(path, buf.getvalue())
