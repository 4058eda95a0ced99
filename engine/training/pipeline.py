"""Pretraining a fresh model from scratch on a coreset (DESIGN step 5), called by
``launch/pretrain.py`` and the experiment harness.

The training set is the given corpus indices less a fixed held-out sample (the same for every
coreset drawn with the same seed, never trained on), which gives the MLM loss and perplexity after
each epoch. ``steps`` makes runs compute-matched: every coreset gets the same number of optimizer
steps (a small one is repeated) instead of the same number of epochs. A rerun into the same
--out resumes, also with a larger ``steps`` (or ``epochs``): it takes the same batches and
reaches the same weights as an unbroken run of the new length (the LR schedule depends on the
step alone, see :func:`bioprune.engine.training.loop.make_engine`).
The run is two phases of a :class:`bioprune.engine.io.phases.PhaseRunner` (the data, the
training), which records them in ``manifest.json``.
Collective: every rank calls :func:`run_pretraining` with the same settings.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from bioprune.engine.data.corpus import Corpus
from bioprune.engine.data.record_ids import ids_to_indices
from bioprune.engine.data.sampling import heldout_indices
from bioprune.engine.io.atomic import save_npy
from bioprune.engine.io.manifest import Manifest
from bioprune.engine.io.phases import Phase, PhaseRunner
from bioprune.engine.io.run_identity import load_indices
from bioprune.engine.models import ModelBundle
from bioprune.engine.models.inputs import ModelInputs, load_model_and_corpus
from bioprune.engine.runtime import distributed
from bioprune.engine.runtime import validate
from bioprune.engine.runtime.errors import fail
from bioprune.engine.runtime.flags import Exclusive, Flag, at_least, finite, setting
from bioprune.engine.runtime.run_flags import DEEPSPEED_CONFIG, OFFLOAD, ZERO_STAGE
from bioprune.engine.runtime.zero3 import ds_config
from bioprune.engine.training.checks import begin_pretraining
from bioprune.engine.training.loop import TrainSettings, epochs_for_steps, export_weights, train
from bioprune.engine.training.trackers import report_to_flag


OPTIMISATION = "optimisation"
CHECKPOINTS = "checkpoints (resume, preemption)"


# Every flag of pretrain.py is declared here, once (runtime.flags). The field order is the order
# of the run identity's keys in run_config.json. --indices is in the identity by its digest
# (checks.py); epochs / steps may grow, which resumes.
@dataclass
class PretrainSettings(ModelInputs):
    # an int64 .npy of corpus indices (or a list of record ids); None = the whole corpus (--all)
    indices: str | None = setting(None, identity=False, check=lambda name, value: validate.
                                  readable_file(name, value, "index file (.npy)"), flag=(
        Flag(metavar="FILE", group="training set", exclusive=Exclusive("training set", True),
             help="what to train on: corpus indices (a coreset.npy, subset.npy or any int64 "
                  ".npy), or record ids, one per line (a text file; the first tab-separated "
                  "column is read, '#' lines skipped; from a selection: cut -f2 coreset.tsv | "
                  "tail -n +2 > ids.txt). Ids survive a corpus that was reordered or "
                  "re-exported; indices do not"),
        Flag(names=("--all",), action="store_const", const=None, group="training set",
             exclusive=Exclusive("training set", True), help="train on the whole corpus")))
    epochs: int = setting(10, identity=False, check=at_least(1), flag=Flag(
        type=int, group=OPTIMISATION, help="passes over the training set"))
    # total optimizer steps (overrides epochs)
    steps: int | None = setting(None, identity=False, check=at_least(1, "{flag} must be >= 1"),
                                flag=Flag(
        type=int, group=OPTIMISATION,
        help="train for exactly this many optimizer steps instead of --epochs (a small training "
             "set repeats): compute-matched comparisons of coresets"))
    lr: float = setting(1e-4, identity=True, check=finite(
        low=0, low_open=True, what="a learning rate"), flag=Flag(
        type=float, group=OPTIMISATION, help="peak AdamW learning rate"))
    weight_decay: float = setting(0.01, identity=True, check=finite(low=0), flag=Flag(
        type=float, group=OPTIMISATION, help="AdamW weight decay"))
    warmup: int = setting(2000, identity=True, check=at_least(0), flag=Flag(
        type=int, group=OPTIMISATION,
        help="linear warm-up steps, then inverse-square-root decay"))
    micro_batch_size: int = setting(16, identity=True, check=at_least(1), flag=Flag(
        type=int, group=OPTIMISATION, help="sequences per step per rank"))
    grad_accum: int = setting(1, identity=True, check=at_least(1), flag=Flag(
        type=int, group=OPTIMISATION, help="gradient accumulation steps"))
    seed: int = setting(0, identity=True, check=at_least(0), flag=Flag(
        type=int, group=OPTIMISATION,
        help="initialisation, data order, masks and the held-out sample"))
    heldout_size: int = setting(1000, identity=True, check=at_least(0), flag=Flag(
        type=int, group=OPTIMISATION,
        help="sequences of the corpus held out for the per-epoch MLM loss/perplexity (removed "
             "from the training set); 0 disables"))
    # checkpoint every N steps too
    save_steps: int | None = setting(None, identity=False, check=at_least(1), flag=Flag(
        type=int, metavar="N", group=CHECKPOINTS,
        help="also checkpoint every N optimizer steps (default: at each epoch's end only); a "
             "rerun resumes from the last one on exactly the batches an unbroken run takes. "
             "SIGTERM/SIGHUP (Slurm's --signal, a time limit) always checkpoints at the current "
             "step, then exits 143"))
    # keep the K newest checkpoints
    save_total_limit: int | None = setting(None, identity=False, check=at_least(1), flag=Flag(
        type=int, metavar="K", group=CHECKPOINTS,
        help="keep only the K most recent checkpoints (default: every one)"))
    # changes no result: a resume may change it
    report_to: str = setting("tensorboard", identity=False, flag=report_to_flag(
        "pretraining (stage pretrain)"))
    out: str = setting("runs/pretrain", identity=False, check=validate.output_dir, flag=Flag(
        required=True, help="output directory"))
    zero_stage: int = setting(2, identity=True, flag=ZERO_STAGE)
    offload: str = setting("none", identity=False, flag=OFFLOAD)
    deepspeed_config: str | None = setting(None, identity=True, check=validate.json_file,
                                           flag=DEEPSPEED_CONFIG)


def read_indices(path: str, n: int, corpus=None) -> np.ndarray:
    """A 1-D array of distinct corpus indices in [0, n), or a UsageError naming the problem.
    A coreset written by select_coreset.py carries the content digest of the scored corpus in
    the ``selection.json`` beside it: with ``corpus`` given it must match (the same records in
    another order would pass every other check and train on the wrong sequences)."""
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


@dataclass(frozen=True)
class TrainingSet:
    """The data phase's result: the model to train and what it trains and is held out on."""
    bundle: ModelBundle
    corpus: Corpus
    indices: np.ndarray          # sorted corpus indices, the held-out sample removed
    heldout: np.ndarray
    removed: int                 # indices dropped because they are held out
    epochs: int
    max_residues: int


def run_pretraining(s: PretrainSettings) -> Path:
    """Train, checkpoint per epoch and where ``steps`` stops (resumable), export ``out/final``;
    returns that directory. Two phases (``io.phases``): the data (model, corpus, training set,
    held-out sample) and the training; the training resumes from its own checkpoints."""
    t0 = time.time()
    finished = begin_pretraining(s)   # all flags checked; --out locked; another coreset refused
    if finished is not None:
        return finished
    out = Path(s.out).expanduser().absolute()
    rank, world = distributed.rank(), distributed.world_size()
    manifest = Manifest(out / "manifest.json", "pretrain", vars(s), world) if rank == 0 else None
    phases = PhaseRunner(manifest)
    zero_config = ds_config(s.zero_stage, s.deepspeed_config, s.offload)
    data = phases(Phase("data", partial(_training_set, s, out, zero_config, world),
                        record=_record_data, timed=False))
    result = phases(Phase("train", partial(_train, s, out, data), record=_record_training,
                          items=lambda r: r["sequences"], seconds=lambda r: r["seconds"]))
    if rank == 0:
        manifest.timing("total", time.time() - t0)
        manifest.save("finished")
        last = result["metrics"][-1] if result["metrics"] else {}
        print(f"pretrained {len(data.indices)} sequences x {data.epochs} epochs "
              f"({result['steps']} steps); held-out loss "
              f"{_number(last.get('heldout_loss')):.4f} "
              f"ppl {_number(last.get('heldout_ppl')):.3f} -> {out / 'final'}", flush=True)
    return out / "final"


def _training_set(s: PretrainSettings, out: Path, zero_config: dict, world: int) -> TrainingSet:
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
    if distributed.rank() == 0:
        save_npy(out / "heldout.npy", heldout)
    return TrainingSet(bundle, corpus, train_idx, heldout, int(overlap.sum()), epochs, max_res)


def _record_data(manifest: Manifest, data: TrainingSet) -> None:
    corpus = data.corpus
    manifest.count(corpus=len(corpus), train=len(data.indices), heldout=len(data.heldout),
                   removed_for_heldout=data.removed, epochs=data.epochs,
                   cropped=int((corpus.lengths[data.indices] > data.max_residues).sum()),
                   rejected_records=int(corpus.stats.get("rejected", 0)))
    # heldout.npy holds positions in this corpus: evaluate.py --run checks it is the same
    manifest.set("corpus_digest", corpus.content_digest())


def _train(s: PretrainSettings, out: Path, data: TrainingSet) -> dict:
    """``loop.train``'s result, the model exported to ``out/final``."""
    settings = TrainSettings(
        lr=s.lr, weight_decay=s.weight_decay, warmup_steps=s.warmup, schedule="inverse_sqrt",
        epochs=data.epochs, micro_batch_size=s.micro_batch_size, seed=s.seed,
        max_residues=data.max_residues, zero_stage=s.zero_stage, ds_config=s.deepspeed_config,
        grad_accum=s.grad_accum, max_steps=s.steps, offload=s.offload, save_steps=s.save_steps,
        save_total_limit=s.save_total_limit)
    result = train(data.bundle, data.corpus, data.indices, settings,
                   checkpoint_dir=out / "checkpoints", heldout=data.heldout,
                   metrics_csv=out / "metrics.csv", report_to=s.report_to, run_dir=out,
                   progress_desc="pretrain")
    export_weights(result["engine"], data.bundle, out / "final")
    return result


def _number(v) -> float:
    """A metric read back from metrics.csv (a string, maybe empty) or computed (a float)."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _record_training(manifest: Manifest, result: dict) -> None:
    manifest.set("ds_config", result["engine"].bioprune_config_source)
    manifest.set("metrics", result["metrics"])
    manifest.count(steps=result["steps"], resumed_from_epoch=result["start_epoch"],
                   resumed_from_step=result["start_step"])
