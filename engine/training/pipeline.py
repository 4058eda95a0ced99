"""Pretraining a fresh model from scratch on a coreset (DESIGN step 5), called by
``launch/pretrain.py`` and the experiment harness.

The training set is the given corpus indices less a fixed held-out sample (the same for every
coreset drawn with the same seed, never trained on), which gives the MLM loss and perplexity after
each epoch. ``steps`` makes runs compute-matched: every coreset gets the same number of optimizer
steps (a small one is repeated) instead of the same number of epochs. A rerun into the same
--out resumes, also with a larger ``steps`` (or ``epochs``): it takes the same batches and
reaches the same weights as an unbroken run of the new length (the LR schedule depends on the
step alone, see :func:`bioprune.engine.training.loop.make_engine`).
Collective: every rank calls :func:`run_pretraining` with the same settings.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bioprune.engine.data.sampling import heldout_indices
from bioprune.engine.io.atomic import save_npy
from bioprune.engine.io.manifest import Manifest
from bioprune.engine.models.inputs import ModelInputs, load_model_and_corpus
from bioprune.engine.runtime import distributed
from bioprune.engine.runtime.errors import fail
from bioprune.engine.training.checks import begin_pretraining


@dataclass
class PretrainSettings(ModelInputs):
    out: str = "runs/pretrain"
    indices: str | None = None      # an int64 .npy of corpus indices; None = the whole corpus
    epochs: int = 10
    steps: int | None = None        # total optimizer steps (overrides epochs)
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup: int = 2000
    micro_batch_size: int = 16
    grad_accum: int = 1
    seed: int = 0
    heldout_size: int = 1000
    save_steps: int | None = None        # checkpoint every N steps too (not part of the identity)
    save_total_limit: int | None = None  # keep the K newest checkpoints
    zero_stage: int = 2
    offload: str = "none"
    deepspeed_config: str | None = None


def read_indices(path: str, n: int, corpus=None) -> np.ndarray:
    """A 1-D array of distinct corpus indices in [0, n), or a UsageError naming the problem.
    A coreset written by select_coreset.py carries the content digest of the scored corpus in
    the ``selection.json`` beside it: with ``corpus`` given it must match (the same records in
    another order would pass every other check and train on the wrong sequences)."""
    from bioprune.engine.data.record_ids import ids_to_indices
    from bioprune.engine.io.run_identity import load_indices

    idx = load_indices(path)
    by_id = isinstance(idx, list)
    if by_id:   # record ids, e.g. coreset.tsv's id column: positions in this corpus, whatever order
        if corpus is None:
            fail(f"--indices {path}: a list of record ids needs the corpus to map them")
        idx = ids_to_indices(idx, corpus, path)
    bad = idx[(idx < 0) | (idx >= n)]
    if len(bad):
        fail(f"--indices {path}: {len(bad)} indices outside the corpus of {n} "
             f"(first: {bad[:5].tolist()}); was it made from the same --data?")
    if len(np.unique(idx)) != len(idx):
        fail(f"--indices {path}: repeated corpus indices")
    sel = Path(path).absolute().parent / "selection.json"
    if corpus is not None and sel.is_file() and not by_id:
        try:
            want = json.loads(sel.read_text()).get("corpus_digest")
        except (OSError, ValueError):
            want = None
        if want and (here := corpus.content_digest()) != want:
            fail(f"--indices {path}: selected on another corpus than --data (content digest "
                 f"{want} in {sel}, {here} here: other records, or the same "
                 "in another order); give --data the files that were scored, in that order")
    return idx


def run_pretraining(s: PretrainSettings) -> Path:
    """Train, checkpoint per epoch and where ``steps`` stops (resumable), export ``out/final``;
    returns that directory."""
    from bioprune.engine.runtime.zero3 import ds_config
    from bioprune.engine.training.loop import TrainSettings, epochs_for_steps, export_weights, train

    t0 = time.time()
    finished = begin_pretraining(s)   # all flags checked; --out locked; another coreset refused
    if finished is not None:
        return finished
    out = Path(s.out).expanduser().absolute()
    rank, world = distributed.rank(), distributed.world_size()
    zero_config = ds_config(s.zero_stage, s.deepspeed_config, s.offload)
    bundle, corpus, _, max_res = load_model_and_corpus(s, s.seed, out, zero_config)
    n = len(corpus)
    train_idx = (np.arange(n, dtype=np.int64) if s.indices is None
                 else read_indices(s.indices, n, corpus))
    heldout = heldout_indices(n, s.heldout_size, s.seed)
    overlap = np.isin(train_idx, heldout)
    train_idx = np.sort(train_idx[~overlap]).astype(np.int64)
    if len(train_idx) == 0:
        fail("nothing left to train on after removing the held-out sample; lower --heldout-size")
    epochs = s.epochs if not s.steps else epochs_for_steps(
        s.steps, len(train_idx), s.micro_batch_size, world, s.grad_accum)
    settings = TrainSettings(
        lr=s.lr, weight_decay=s.weight_decay, warmup_steps=s.warmup, schedule="inverse_sqrt",
        epochs=epochs, micro_batch_size=s.micro_batch_size, seed=s.seed, max_residues=max_res,
        zero_stage=s.zero_stage, ds_config=s.deepspeed_config, grad_accum=s.grad_accum,
        max_steps=s.steps, offload=s.offload, save_steps=s.save_steps,
        save_total_limit=s.save_total_limit)
    manifest = None
    if rank == 0:
        save_npy(out / "heldout.npy", heldout)
        manifest = Manifest(out / "manifest.json", "pretrain", vars(s), world)
        manifest.count(corpus=n, train=len(train_idx), heldout=len(heldout),
                       removed_for_heldout=int(overlap.sum()), epochs=epochs,
                       cropped=int((corpus.lengths[train_idx] > max_res).sum()),
                       rejected_records=int(corpus.stats.get("rejected", 0)))
        # heldout.npy holds positions in this corpus: evaluate.py --run checks it is the same
        manifest.set("corpus_digest", corpus.content_digest())
        manifest.save()
    result = train(bundle, corpus, train_idx, settings, checkpoint_dir=out / "checkpoints",
                   heldout=heldout, metrics_csv=out / "metrics.csv", report_to=s.report_to,
                   run_dir=out, progress_desc="pretrain")
    export_weights(result["engine"], bundle, out / "final")
    if rank == 0:
        _record(manifest, result, t0)
        last = result["metrics"][-1] if result["metrics"] else {}
        print(f"pretrained {len(train_idx)} sequences x {epochs} epochs ({result['steps']} steps); "
              f"held-out loss {_number(last.get('heldout_loss')):.4f} "
              f"ppl {_number(last.get('heldout_ppl')):.3f} -> {out / 'final'}", flush=True)
    return out / "final"


def _number(v) -> float:
    """A metric read back from metrics.csv (a string, maybe empty) or computed (a float)."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _record(manifest: Manifest, result: dict, t0: float) -> None:
    manifest.set("ds_config", result["engine"].bioprune_config_source)
    manifest.set("metrics", result["metrics"])
    manifest.count(steps=result["steps"], resumed_from_epoch=result["start_epoch"],
                   resumed_from_step=result["start_step"])
    manifest.timing("train", result["seconds"], result["sequences"])
    manifest.timing("total", time.time() - t0)
    manifest.save("finished")
