"""The evaluation driver: load the encoder, load every task (fail fast), embed once per encoder
and task, train the probes over the probe seeds, write ``eval.json`` and ``eval.md``."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from bioprune.engine.evaluation import metrics as M
from bioprune.engine.evaluation.settings import TASK_ALIASES, EvalSettings
from bioprune.engine.evaluation.tasks import LOADERS, MOLECULE_OF, EvalError, TaskData, load_csv
from bioprune.engine.runtime.flags import check_fields


# ------------------------------------------------------------------------------------ encoder

def _n_params(module) -> int:
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


def find_run_weights(run: Path) -> Path:
    """The model directory of --run: RUN itself, RUN/final (pretraining) or RUN/adapted
    (scoring)."""
    for d in (run, run / "final", run / "adapted"):
        if (d / "model.safetensors").exists() and (d / "config.json").exists():
            return d
    raise EvalError(f"--run {run}: no model.safetensors + config.json in it, in final/ or in "
                    "adapted/ (a pretraining or scoring run, or a saved model directory)")


def load_encoder(s: EvalSettings):
    from bioprune.engine.models import build_model, load_saved_model

    given = [x for x in (s.weights, s.run, s.init) if x]
    if len(given) != 1:
        raise EvalError("give exactly one of --weights FILE, --run DIR, --init random")
    torch.manual_seed(s.seed)
    try:
        if s.init:
            if s.init != "random":
                raise EvalError(f"--init {s.init}: only 'random' is known")
            bundle = build_model(s.model, s.model_size)
            info = {"source": "random", "path": None, "init_seed": s.seed}
        elif s.weights:
            if not Path(s.weights).exists():
                raise EvalError(f"--weights {s.weights}: no such file")
            bundle = build_model(s.model, s.model_size, s.weights)
            info = {"source": "weights", "path": str(Path(s.weights).absolute())}
        else:
            run = Path(s.run)
            if not run.is_dir():
                raise EvalError(f"--run {s.run}: no such directory")
            d = find_run_weights(run)
            from bioprune.engine.models.saved import saved_model_kind

            model, size = saved_model_kind(json.loads((d / "config.json").read_text()))
            # an hf: directory has no size of ours; its architecture is the directory itself
            if model != s.model or (model != "hf" and size != s.model_size):
                raise EvalError(f"--run {s.run}: {d / 'config.json'} is {model} {size}, not "
                                f"--model {s.model} --model-size {s.model_size}")
            bundle = load_saved_model(d)
            info = {"source": "run", "path": str(d.absolute())}
    except EvalError:
        raise
    except (ValueError, FileNotFoundError, RuntimeError, KeyError, OSError) as e:
        what = f"--weights {s.weights}" if s.weights else (f"--run {s.run}" if s.run else "--model")
        raise EvalError(f"{what}: {str(e).splitlines()[0]}") from None
    info.update(model=bundle.name, size=bundle.size, molecule=bundle.molecule,
                parameters=_n_params(bundle.module))
    return bundle, info


# -------------------------------------------------------------------------------------- tasks

def expand_tasks(specs) -> list[str]:
    out = []
    for t in specs:
        t = t.strip()
        if not t:
            continue
        for name in TASK_ALIASES.get(t, (t,)):
            if name not in out:
                out.append(name)
    if not out:
        raise EvalError("--tasks: no task given")
    return out


def load_task(name: str, bundle, s: EvalSettings) -> TaskData:
    if name.startswith("csv:"):
        return load_csv(name, bundle.molecule, s)
    if name == "mlm":
        from bioprune.engine.evaluation.mlm import load_mlm

        return load_mlm(s, bundle, Path(s.out))
    if name not in LOADERS:
        known = ", ".join([*LOADERS, "mlm", "csv:PATH", *TASK_ALIASES])
        raise EvalError(f"--tasks: unknown task {name!r} (known: {known})")
    if MOLECULE_OF[name] != bundle.molecule:
        raise EvalError(f"--tasks {name}: a {MOLECULE_OF[name]} task; --model {bundle.name} "
                        f"is a {bundle.molecule} model")
    return LOADERS[name](s)


# --------------------------------------------------------------------------------- evaluation

def _control(y_tr, y_te, rng):
    """Random labels for train and test rows alike, drawn from the training label distribution."""
    pool = np.concatenate(list(y_tr)) if isinstance(y_tr, list) else np.asarray(y_tr)
    if isinstance(y_tr, list):  # per-token targets: one draw per residue
        return ([rng.choice(pool, len(a)) for a in y_tr], [rng.choice(pool, len(a)) for a in y_te])
    return rng.choice(pool, len(y_tr)), rng.choice(pool, len(y_te))


class Evaluator:
    def __init__(self, bundle, s: EvalSettings, accelerator):
        self.bundle, self.s, self.acc = bundle, s, accelerator
        self.progress = s.progress and accelerator.is_local_main_process
        self.max_length = min(s.max_length or bundle.max_residues, bundle.max_residues)

    def seeds(self):
        return [self.s.seed + k for k in range(self.s.probe_seeds)]

    def _embed(self, task, rows, mode, max_length=None):
        from bioprune.engine.evaluation.embed import embed

        return embed(self.bundle, task.seqs, rows, max_length=max_length or self.max_length,
                     mode=mode, batch_size=self.s.embed_batch_size, device=self.acc.device,
                     autocast=self.acc.autocast, progress=self.progress,
                     desc=f"embed {task.name}")

    def run_task(self, task: TaskData) -> dict:
        s = self.s
        t0 = time.time()
        entry = {"kind": task.kind}
        if s.control and task.kind in ("pairs", "mlm"):
            entry.update(metrics={}, skipped=f"--control {s.control} does not apply to {task.kind}",
                         n_train=task.info["n_train"], n_test=task.info["n_test"])
            return entry
        if task.kind == "mlm":
            from bioprune.engine.evaluation.mlm import evaluate_mlm

            vals, stats = evaluate_mlm(task, self.bundle, s, self.acc.device, self.progress)
            entry.update(metrics={k: M.summarize(v) for k, v in vals.items()},
                         head={"type": "the model's MLM head"}, frozen=True, mlm=stats)
        elif task.kind == "pairs":
            entry.update(self._pairs(task))
        elif task.kind == "token":
            entry.update(self._token(task))
        elif not s.frozen:
            entry.update(self._finetune(task))
        else:
            entry.update(self._pooled(task))
        entry["control"] = s.control
        entry.update({k: v for k, v in task.info.items() if not k.startswith("_")})
        entry["seconds"] = round(time.time() - t0, 3)
        return entry

    # sequence-level, frozen: embeddings once, reused for every fold and probe seed
    def _pooled(self, task):
        s = self.s
        rows = np.unique(np.concatenate([np.concatenate([f.train, f.test]) for f in task.folds]))
        X, emb = self._embed(task, rows, "mean")
        pos = {int(r): k for k, r in enumerate(rows)}
        head = "linear" if task.head == "linear" else "mlp"
        n_out = len(task.classes) if task.kind == "classification" else 1
        probe_sec = []

        def predict(f, y_tr, seed):
            pred, st = self._fit(X[[pos[r] for r in f.train]], y_tr, X[[pos[r] for r in f.test]],
                                 task, n_out, head, seed)
            probe_sec.append(st["seconds"])
            return pred

        per_seed, chance = self._seeds_and_folds(task, predict)
        out = {"metrics": _summarise(per_seed), "frozen": True, "pooling": "mean over residues",
               "head": self._head_info(head, task), "training": self._train_info(s.probe_epochs,
               s.probe_lr, s.probe_batch_size), "embedding": emb,
               "probe_seconds": round(float(np.sum(probe_sec)), 3)}
        if task.kind == "classification":
            out.update(n_classes=len(task.classes), chance=chance)
        return out

    def _seeds_and_folds(self, task, predict):
        """A sequence-level task for every probe seed: per fold the (control-)labels, the test
        predictions of ``predict(fold, train labels, seed)`` and their metrics, averaged over
        folds. Returns (per-seed metrics, chance levels of a classification task)."""
        s = self.s
        per_seed, chance = [], None
        for p in self.seeds():
            fold_metrics = []
            for fi, f in enumerate(task.folds):
                y_tr, y_te = np.asarray(task.targets)[f.train], np.asarray(task.targets)[f.test]
                if s.control:
                    y_tr, y_te = _control(y_tr, y_te, np.random.default_rng([s.split_seed, p, fi]))
                pred = predict(f, y_tr, p)
                fold_metrics.append(M.classification_metrics(y_te, pred)
                                    if task.kind == "classification"
                                    else M.regression_metrics(y_te, pred))
                if chance is None and task.kind == "classification":
                    chance = _chance(y_tr, y_te, len(task.classes))
            per_seed.append(_mean_dicts(fold_metrics))
        return per_seed, chance

    def _fit(self, X_tr, y_tr, X_te, task, n_out, head, seed):
        from bioprune.engine.evaluation.probes import fit_predict

        s = self.s
        token = task.kind == "token"
        return fit_predict(X_tr, y_tr, X_te, kind="regression" if task.kind == "regression"
                           else "classification", n_out=n_out, head=head, hidden=s.probe_hidden,
                           epochs=s.token_epochs if token else s.probe_epochs, lr=s.probe_lr,
                           batch_size=s.token_batch_size if token else s.probe_batch_size,
                           weight_decay=s.probe_weight_decay, seed=seed, accelerator=self.acc,
                           progress=self.progress, desc=f"probe {task.name} seed {seed}")

    def _head_info(self, head, task):
        d = {"type": head, "input": "embedding standardised with the training rows' mean/std"}
        if head == "mlp":
            d["hidden"] = self.s.probe_hidden
        if task.kind == "regression":
            d["target"] = "standardised on training rows; MSE loss"
        return d

    def _train_info(self, epochs, lr, batch):
        s = self.s
        return {"optimizer": "AdamW", "lr": lr, "weight_decay": s.probe_weight_decay,
                "epochs": epochs, "batch_size": batch, "probe_seeds": self.seeds(),
                "processes": self.acc.num_processes, "mixed_precision": self.acc.mixed_precision}

    def _token(self, task):
        s = self.s
        rows = np.unique(np.concatenate([np.concatenate([f.train, f.test]) for f in task.folds]))
        H, emb = self._embed(task, rows, "tokens")
        pos = {int(r): k for k, r in enumerate(rows)}
        f = task.folds[0]
        Htr = [H[pos[r]] for r in f.train]
        Hte = [H[pos[r]] for r in f.test]
        y_tr0 = [task.targets[r][:len(h)] for r, h in zip(f.train, Htr)]
        y_te0 = [task.targets[r][:len(h)] for r, h in zip(f.test, Hte)]
        X_tr, X_te = torch.cat(Htr), torch.cat(Hte)
        per_seed, chance = [], None
        for p in self.seeds():
            y_tr, y_te = y_tr0, y_te0
            if s.control:
                y_tr, y_te = _control(y_tr, y_te, np.random.default_rng([s.split_seed, p, 0]))
            y_tr, y_te = np.concatenate(y_tr), np.concatenate(y_te)
            pred, _ = self._fit(X_tr, y_tr, X_te, task, len(task.classes), "mlp", p)
            per_seed.append({"acc": M.classification_metrics(y_te, pred)["acc"]})
            chance = chance or _chance(y_tr, y_te, len(task.classes))
        return {"metrics": _summarise(per_seed), "frozen": True, "pooling": "none (per residue)",
                "head": self._head_info("mlp", task), "n_train_residues": int(len(X_tr)),
                "n_test_residues": int(len(X_te)), "classes": task.classes, "chance": chance,
                "training": self._train_info(s.token_epochs, s.probe_lr, s.token_batch_size),
                "embedding": emb}

    def _pairs(self, task):
        from bioprune.engine.evaluation.probes import fit_predict_pairs

        s = self.s
        rows = np.unique(np.concatenate([np.concatenate([f.train, f.test]) for f in task.folds]))
        H, emb = self._embed(task, rows, "tokens", max_length=max(self.max_length, s.ss_max_length))
        pos = {int(r): k for k, r in enumerate(rows)}
        per_seed, thresholds, per_fold = [], [], {}
        for p in self.seeds():
            fold_metrics = []
            for f in task.folds:
                if not len(f.train) or not len(f.test):
                    continue
                pred, st = fit_predict_pairs(
                    [H[pos[r]] for r in f.train], [task.targets[r] for r in f.train],
                    [H[pos[r]] for r in f.test], channels=s.ss_channels, epochs=s.ss_epochs,
                    lr=s.ss_lr, seed=p, batch_size=s.ss_batch_size, accelerator=self.acc,
                    progress=self.progress,
                    desc=f"probe {task.name} {f.name} seed {p}")
                thresholds.append(st["threshold"])
                m = _mean_dicts([M.pair_metrics(task.targets[r], pp, len(task.seqs[r]))
                                 for r, pp in zip(f.test, pred)])
                fold_metrics.append(m)
                per_fold.setdefault(f.name, []).append(m)
            per_seed.append(_mean_dicts(fold_metrics))
        out = {"metrics": _summarise(per_seed), "frozen": True,
               "head": {"type": "pairwise", "channels": s.ss_channels,
                        "layers": "Linear(D,c) -> outer concat -> Conv3x3(2c,c) -> ReLU -> "
                                  "Conv3x3(c,c) -> ReLU -> Conv1x1(c,1), symmetrised",
                        "decoding": "greedy, one partner per base, j - i > 3, threshold tuned on "
                                    "training sequences", "thresholds": thresholds},
               "training": {"optimizer": "AdamW", "lr": s.ss_lr, "weight_decay": 0.01,
                            "epochs": s.ss_epochs, "batch_size": s.ss_batch_size,
                            "batching": "groups of similar length",
                            "loss": "BCE over pairs j - i > 3",
                            "probe_seeds": self.seeds()},
               "metric_averaging": "per test sequence, then mean over sequences (and folds)",
               "ss_max_length": s.ss_max_length, "embedding": emb}
        if len(per_fold) > 1:
            out["per_fold"] = {k: {m: float(np.mean([d[m] for d in v])) for m in v[0]}
                               for k, v in per_fold.items()}
        return out

    def _finetune(self, task):
        from bioprune.engine.evaluation.embed import tokens_of
        from bioprune.engine.evaluation.probes import finetune_predict

        s = self.s
        head = "linear" if task.head == "linear" else "mlp"
        n_out = len(task.classes) if task.kind == "classification" else 1
        def predict(f, y_tr, seed):
            tok_tr = [tokens_of(task.seqs[r], self.bundle, self.max_length, "ends")
                      for r in f.train]
            tok_te = [tokens_of(task.seqs[r], self.bundle, self.max_length, "ends") for r in f.test]
            pred, _ = finetune_predict(
                self.bundle, tok_tr, y_tr, tok_te, kind="regression" if task.kind ==
                "regression" else "classification", n_out=n_out, head=head,
                hidden=s.probe_hidden, epochs=s.finetune_epochs, lr=s.finetune_lr,
                batch_size=s.probe_batch_size, weight_decay=s.probe_weight_decay, seed=seed,
                accelerator=self.acc, progress=self.progress,
                desc=f"finetune {task.name} seed {seed}")
            return pred

        per_seed, chance = self._seeds_and_folds(task, predict)
        out = {"metrics": _summarise(per_seed), "frozen": False, "pooling": "mean over residues",
               "head": {"type": head, "hidden": s.probe_hidden if head == "mlp" else None,
                        "input": "mean-pooled embedding, encoder fine-tuned"},
               "training": self._train_info(s.finetune_epochs, s.finetune_lr, s.probe_batch_size),
               "max_length": self.max_length, "crop": "ends"}
        if task.kind == "classification":
            out.update(n_classes=len(task.classes), chance=chance)
        return out


def _chance(y_tr, y_te, k):
    vals, counts = np.unique(np.asarray(y_tr), return_counts=True)
    top = vals[np.argmax(counts)]
    return {"uniform": 1.0 / k, "majority": float(np.mean(np.asarray(y_te) == top))}


def _mean_dicts(ds):
    return {k: float(np.mean([d[k] for d in ds])) for k in ds[0]} if ds else {}


def _summarise(per_seed):
    keys = per_seed[0].keys() if per_seed else []
    return {k: M.summarize([d[k] for d in per_seed]) for k in keys}


# -------------------------------------------------------------------------------------- driver

def run(s: EvalSettings) -> dict:
    t_start = time.time()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    check_fields(s)    # each flag's own check, declared with its field (settings.py)
    threads = torch.get_num_threads()
    if s.threads:
        torch.set_num_threads(s.threads)
    try:
        return _run(s, t_start, started)
    finally:
        torch.set_num_threads(threads)


def _run(s: EvalSettings, t_start: float, started: str) -> dict:
    from accelerate import Accelerator

    from bioprune.engine.evaluation.report import markdown
    from bioprune.engine.io.atomic import write_json, write_text
    from bioprune.engine.io.manifest import versions

    names = expand_tasks(s.tasks)
    bundle, enc = load_encoder(s)
    # before the tasks: under `accelerate launch` this joins the process group, so the ranks
    # build the mlm corpus together (data.corpus.load_corpus)
    acc = Accelerator()
    tasks, load_sec = {}, {}
    for name in names:
        t0 = time.time()
        tasks[name] = load_task(name, bundle, s)
        load_sec[name] = round(time.time() - t0, 3)
    torch.set_grad_enabled(True)
    results, timings = {}, {}
    for name, task in tasks.items():
        results[name] = Evaluator(bundle, s, acc).run_task(task)
        results[name]["load_seconds"] = load_sec[name]
        timings[name] = round(results[name]["seconds"] + load_sec[name], 3)
        _log(acc, name, results[name])
    doc = {"tasks": results, "encoder": enc, "frozen": s.frozen, "control": s.control}
    if s.floor:
        torch.manual_seed(s.seed)
        from bioprune.engine.models import build_model

        floor = build_model(s.model, s.model_size)
        doc["floor"] = {"encoder": {"source": "random", "init_seed": s.seed, "model": s.model,
                                    "size": s.model_size, "parameters": _n_params(floor.module)},
                        "tasks": {}}
        for name, task in tasks.items():
            doc["floor"]["tasks"][name] = Evaluator(floor, s, acc).run_task(task)
            timings[f"floor/{name}"] = doc["floor"]["tasks"][name]["seconds"]
            _log(acc, f"floor {name}", doc["floor"]["tasks"][name])
    timings["total"] = round(time.time() - t_start, 3)
    doc["manifest"] = {"command": "evaluate", "argv": s.argv, "settings": s.to_dict(),
                       "versions": versions(),
                       "device": str(acc.device), "processes": acc.num_processes,
                       "mixed_precision": acc.mixed_precision, "started": started,
                       "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "timings_s": timings}
    if acc.is_main_process:
        out = Path(s.out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "eval.json", doc)
        write_text(out / "eval.md", markdown(doc))
    acc.wait_for_everyone()
    return doc




def _log(acc, name, entry):
    if not acc.is_main_process:
        return
    ms = ", ".join(f"{k} {v['mean']:.4f}±{v['std']:.4f}"
                   for k, v in entry.get("metrics", {}).items())
    print(f"[evaluate] {name}: {ms or entry.get('skipped', '')} (n_train {entry.get('n_train')}, "
          f"n_test {entry.get('n_test')}, {entry.get('seconds')} s)", flush=True)
