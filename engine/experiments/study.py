"""The study as a list of steps, each run once: the real launchers as subprocesses, one marker each.

Layout of the experiment directory ``OUT``::

    experiment.json            the resolved config (a rerun with a different one is refused)
    data/train.fasta           the training corpus (every launcher sees only this)
    data/heldout/<group>.fasta the held-out part, one file per input (never scored, selected or
                               trained on): the mlm task's loss@GROUP and loss_macro
    data/train_group.npy       the input (group) of every training record: composition table
    corpus/                    memory-mapped cache of train.fasta, shared by every launcher
    reference/                 pretrain --all (skipped with reference.init = WEIGHTS)
    score/  score_woft/        score.py with adaptation / with --finetune-epochs 0 (CCI w/o ft)
    score_1mask/               score.py with the single-mask score (--mask-draws 1)
    clusters/                  MMseqs2 cluster table of the training corpus (clusters.npy)
    arms/<arm>/select[-s<seed>]/coreset.npy     one per (strategy, rate[, seed])
    arms/<arm>/s<seed>/pretrain/  arms/<arm>/s<seed>/eval/eval.json
    logs/<step>.log            each subprocess's stdout + stderr
    results.csv results.md plots/<task>.png manifest.json

Every step writes ``_DONE.json`` (atomically: wall time, command) into its directory last; a
rerun skips steps whose marker exists, so an interrupted run continues where it stopped. With
``training.workers`` = N the pretraining and evaluation steps run N at a time, each process with
one thread (on a 2-core CPU two one-thread arms do twice the work of one two-thread arm).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from bioprune.engine.experiments.config import CLUSTERED, SCORED
from bioprune.engine.experiments.config import arms as expand_arms
from bioprune.engine.experiments.config import budget as rate_budget
from bioprune.engine.io.atomic import save_npy, write_json
from bioprune.engine.runtime.flags import to_argv

MARKER = "_DONE.json"
DETERMINISTIC = ("topk", "topk_1mask")   # selections that depend on no seed
CLAIM = ".claimed"          # an evaluation taken by an --evaluate-only worker


def repo_root() -> Path:
    """The folder holding launch/ (the installed bioprune.launch, else this file's repo).
    bioprune.launch is a namespace package: its folders are in ``__path__``, not ``__file__``."""
    try:
        import bioprune.launch as bl

        for folder in map(Path, bl.__path__):
            if (folder / "pretrain.py").is_file():
                return folder.resolve().parent
    except ImportError:
        pass
    return Path(__file__).resolve().parents[2]


def data_path(p: str) -> str:
    from bioprune.engine.data.paths import data_dir

    q = Path(p)
    return str(q if q.is_absolute() else data_dir() / q)


@dataclass
class Step:
    name: str            # unique, also the log file name
    phase: str           # split / reference / score / cluster / select / pretrain / evaluate
    dir: Path
    run: Callable[[], dict]
    estimate_s: float
    info: dict = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return (self.dir / MARKER).exists()


class Study:
    def __init__(self, cfg: dict, out, *, ranks: int | None = None, init: str | None = None,
                 quiet: bool = False):
        self.cfg = cfg
        self.out = Path(out).absolute()
        self.root = repo_root()
        self.ranks = int(ranks or cfg["training"]["ranks"])
        if init:
            cfg["reference"]["init"] = str(Path(init).absolute())
        self.quiet = quiet
        self.commands: list[dict] = []
        self.train_fa = self.out / "data" / "train.fasta"
        self.workers = max(1, int(cfg["training"]["workers"]))
        self.cache = self.out / "corpus"
        self._n_train = None

    # ------------------------------------------------------------------ helpers

    def log(self, msg: str) -> None:
        if not self.quiet:
            print(msg, flush=True)

    def launch(self, script: str, args: list[str], name: str, ranks: int = 1) -> float:
        from bioprune.engine.runtime.launching import child_env, entry_command

        path = Path(script) if Path(script).is_absolute() else self.root / "launch" / script
        cmd = entry_command(path, args, ranks)
        logf = self.out / "logs" / f"{name.replace('/', '_')}.log"
        logf.parent.mkdir(parents=True, exist_ok=True)
        env = child_env(one_thread=self.workers > 1)   # processes side by side: one thread each
        t = time.time()
        with open(logf, "w") as f:
            f.write("$ " + " ".join(cmd) + "\n")
            f.flush()
            p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=self.root)
        wall = time.time() - t
        self.commands.append({"step": name, "command": cmd, "wall_s": round(wall, 2),
                              "rc": p.returncode})
        if p.returncode != 0:
            tail = logf.read_text(errors="replace").replace("\r", "\n").splitlines()[-40:]
            raise RuntimeError(f"step {name} failed (exit {p.returncode}); log {logf}:\n"
                               + "\n".join(tail))
        return wall

    @property
    def n_train(self) -> int:
        if self._n_train is None:
            self._n_train = int(json.loads((self.out / "data" / MARKER).read_text())["n_train"])
        return self._n_train

    def _common(self) -> dict:
        """The corpus and model settings every scoring and pretraining run shares."""
        c = self.cfg
        return {"data": [str(self.train_fa)], "model": c["model"], "model_size": c["model_size"],
                "max_length": c["corpus"]["max_length"], "corpus_cache": str(self.cache)}

    def _train_length(self, n: int) -> tuple[dict, dict]:
        """Compute-matched: --steps S for every arm; or the paper's --epochs E."""
        t = self.cfg["training"]
        if t["mode"] == "epochs":
            gb = t["micro_batch_size"] * self.ranks
            return ({"epochs": t["epochs"]},
                    {"epochs": t["epochs"], "steps_planned": t["epochs"] * math.ceil(n / gb)})
        return {"steps": t["steps"]}, {"steps_planned": t["steps"]}

    def _planned_steps(self, n: int) -> int:
        return self._train_length(n)[1]["steps_planned"]

    # ------------------------------------------------------------------ the plan

    def plan(self) -> list[Step]:
        c, est = self.cfg, self.cfg["estimate"]
        L = est["launcher_s"]
        steps: list[Step] = [Step("split", "split", self.out / "data", self.split, 5.0)]
        n_est = self._estimate_n()
        ref = c["reference"]
        all_arms = expand_arms(c)
        runs = sorted({SCORED[a["strategy"]] for a in all_arms if a["strategy"] in SCORED})
        if not ref["init"] and runs:
            steps.append(Step("reference", "reference", self.out / "reference", self.reference,
                              L + ref["steps"] * est["train_step_s"]))
        score_s = (L + n_est * est["score_seq_s"]
                   + c["scoring"]["subset_size"] * est["score_seq_s"] * 2)
        cost = {"score": 1.0, "score_woft": 0.6, "score_1mask": 0.3}
        for run in runs:
            steps.append(Step(run, "score", self.out / run,
                              (lambda r=run: self.score(r)), score_s * cost[run]))
        if any(a["strategy"] in CLUSTERED for a in all_arms):
            steps.append(Step("clusters", "cluster", self.out / "clusters", self.clusters,
                              5 + n_est * 0.0015))
        seeds = c["seeds"]
        evals: list[Step] = []
        train_s = L + self._planned_steps(n_est) * est["train_step_s"]
        for arm in all_arms:
            s, r, name = arm["strategy"], arm["rate"], arm["name"]
            adir = self.out / "arms" / name
            if s in DETERMINISTIC:   # one selection serves every seed
                steps.append(Step(f"{name}/select", "select", adir / "select",
                                  self._selector(arm, adir / "select", 0), est["select_s"]))
            for seed in seeds:
                sdir = adir / f"s{seed}"
                if s not in ("full", "init", *DETERMINISTIC):
                    sel = adir / f"select-s{seed}"
                    steps.append(Step(f"{name}/select-s{seed}", "select", sel,
                                      self._selector(arm, sel, seed),
                                      est["select_s"] if s != "cluster" else 1.0))
                if s != "init":
                    idx = (None if s == "full" else
                           (adir / "select" if s in DETERMINISTIC else adir / f"select-s{seed}")
                           / "coreset.npy")
                    n_arm = n_est if s == "full" else rate_budget(r, n_est)
                    steps.append(Step(f"{name}/s{seed}/pretrain", "pretrain", sdir / "pretrain",
                                      self._pretrainer(idx, seed, sdir / "pretrain",
                                                       f"{name}/s{seed}"),
                                      train_s if c["training"]["mode"] == "steps" else
                                      L + self._planned_steps(n_arm) * est["train_step_s"]))
                evals.append(Step(f"{name}/s{seed}/eval", "evaluate", sdir / "eval",
                                  self._evaluator(s, seed, sdir, f"{name}/s{seed}"), est["eval_s"]))
        # every model is trained before any is evaluated: a missing or failing evaluator costs
        # no training time, and a rerun only evaluates
        return steps + evals

    def _estimate_n(self) -> int:
        m = self.out / "data" / MARKER
        if m.exists():
            return self.n_train
        from bioprune.engine.data.corpus import load_corpus

        src = load_corpus([data_path(p) for p in self.cfg["corpus"]["files"]],
                          self.cfg["molecule"], self.out / "source_corpus",
                          column=self.cfg["corpus"]["column"])
        c = self.cfg["corpus"]
        if c["planted"]["file"] in c["files"]:   # the planted family grows to `share` of it
            lo, hi = src.file_range(c["files"].index(c["planted"]["file"]))
            return int(round((len(src) - (hi - lo)) / (1 - c["planted"]["share"])))
        return int(round(len(src) * (1 - c["heldout_fraction"])))

    # ------------------------------------------------------------------ step bodies

    def split(self) -> dict:
        """Deterministic split into train.fasta and one held-out FASTA per input
        (experiments.split: held-out, calibration or planted known-truth corpus)."""
        from bioprune.engine.data.corpus import load_corpus
        from bioprune.engine.experiments.split import make_split

        c = self.cfg["corpus"]
        files = [data_path(p) for p in c["files"]]
        src = load_corpus(files, self.cfg["molecule"], self.out / "source_corpus",
                          column=c["column"])
        info = make_split(self.cfg, files, src, self.out / "data")
        info["rule"] += "; train corpus index = position in train.fasta"
        return info

    def reference_weights(self) -> str:
        ref = self.cfg["reference"]
        if ref["init"]:
            return ref["init"]
        return str(self.out / "reference" / "final" / "model.safetensors")

    # Each launcher's command line is made from its settings dataclass (runtime.flags.to_argv),
    # so a renamed or removed flag fails in tests/experiments/test_study_argv.py, not mid-study;
    # the config's extra_args follow, as written (the last value of a flag wins).

    def reference_argv(self) -> list:
        from bioprune.engine.training.pipeline import PretrainSettings

        ref, t = self.cfg["reference"], self.cfg["training"]
        s = PretrainSettings(**self._common(), indices=None, steps=ref["steps"],
                             warmup=ref["warmup"], lr=t["lr"],
                             micro_batch_size=t["micro_batch_size"], heldout_size=0,
                             seed=ref["seed"], out=str(self.out / "reference"))
        return [*to_argv(s), *t["extra_args"]]

    def reference(self) -> dict:
        out = self.out / "reference"
        wall = self.launch("pretrain.py", self.reference_argv(), "reference", self.ranks)
        self._drop_checkpoints(out)
        return {"wall_s": wall, "steps": self.cfg["reference"]["steps"]}

    def _score_settings(self, run: str):
        """``score``: the default score; ``score_woft``: no adaptation (CCI w/o ft);
        ``score_1mask``: the single-mask score of the paper's code (--mask-draws 1)."""
        from bioprune.engine.influence.settings import ScoreSettings

        s = self.cfg["scoring"]
        return ScoreSettings(
            **self._common(), checkpoint=self.reference_weights(),
            subset_size=min(s["subset_size"], self.n_train),
            finetune_epochs=0 if run == "score_woft" else s["finetune_epochs"],
            mask_draws=1 if run == "score_1mask" else None,
            micro_batch_size=s["micro_batch_size"], seed=0, out=str(self.out / run))

    def score_argv(self, run: str) -> list:
        return [*to_argv(self._score_settings(run)), *self.cfg["scoring"]["extra_args"]]

    def score(self, run: str) -> dict:
        settings = self._score_settings(run)
        wall = self.launch("score.py", self.score_argv(run), run, self.ranks)
        return {"wall_s": wall, "finetune_epochs": settings.finetune_epochs,
                "mask_args": ["--mask-draws", settings.mask_draws] if settings.mask_draws else []}

    def clusters(self) -> dict:
        from bioprune.engine.data.corpus import load_corpus
        from bioprune.engine.selection.cluster import mmseqs_clusters

        s = self.cfg["selection"]
        corpus = load_corpus([str(self.train_fa)], self.cfg["molecule"], self.cache)
        t = time.time()
        rep, info = mmseqs_clusters(corpus, identity=s["cluster_identity"],
                                    coverage=s["cluster_coverage"], cov_mode=s["cluster_cov_mode"],
                                    mode=s["cluster_mode"], threads=1,
                                    work_dir=self.out / "clusters" / "mmseqs")
        save_npy(self.out / "clusters" / "clusters.npy", rep)
        write_json(self.out / "clusters" / "clusters.json", info)
        import shutil

        shutil.rmtree(self.out / "clusters" / "mmseqs", ignore_errors=True)
        self.commands.append({"step": "clusters", "command": info["command"],
                              "wall_s": round(time.time() - t, 2), "rc": 0})
        return {**info, "wall_s": time.time() - t}

    def _selector(self, arm: dict, out: Path, seed: int):
        s, rate = arm["strategy"], arm["rate"]
        sel = self.cfg["selection"]

        def run() -> dict:
            b = rate_budget(rate, self.n_train)
            if s == "cluster":
                from bioprune.engine.selection.cluster import select_from_clusters

                rep = np.load(self.out / "clusters" / "clusters.npy")
                info = json.loads((self.out / "clusters" / "clusters.json").read_text())
                idx, report = select_from_clusters(rep, b, seed, info)
                save_npy(out / "coreset.npy", idx)
                write_json(out / "selection.json", report)
                return {"budget": b, "selected": int(len(idx))}
            if s == "cci_dedup":
                from bioprune.engine.io.scores import read_share
                from bioprune.engine.runtime.collectives import Comm
                from bioprune.engine.selection.cluster import select_among_representatives

                rep = np.load(self.out / "clusters" / "clusters.npy")
                data, _ = read_share(self.out / SCORED[s] / "scores", Comm())
                idx, report = select_among_representatives(
                    rep, data["index"], data["score"], "cci", b, seed=seed,
                    hard_cutoff=sel["hard_cutoff"], strata=sel["strata"])
                save_npy(out / "coreset.npy", idx)
                write_json(out / "selection.json", report)
                return {"budget": b, "selected": int(len(idx))}
            if s == "random":
                # keys hash(seed, corpus index) decide alone (DESIGN: Randomness), so Random
                # needs no scores: the exact selection over constant scores, in process
                from bioprune.engine.selection.exact import select

                res = select(np.arange(self.n_train), np.zeros(self.n_train), "random", b,
                             seed=seed)
                save_npy(out / "coreset.npy", res.indices)
                write_json(out / "selection.json", res.report)
                return {"budget": b, "selected": int(len(res.indices))}
            wall = self.launch("select_coreset.py", self.select_argv(s, b, seed, out),
                               f"{arm['name']}/{out.name}", 1)
            return {"budget": b, "wall_s": wall}
        return run

    def select_argv(self, strategy: str, budget: int, seed: int, out: Path) -> list:
        """select_coreset.py for a scored arm (cci_woft, cci_1mask -> cci; topk_1mask -> topk)."""
        from bioprune.engine.selection.pipeline import SelectSettings

        sel = self.cfg["selection"]
        s = SelectSettings(scores=str(self.out / SCORED[strategy] / "scores"),
                           strategy=strategy.split("_")[0], budget=budget, seed=seed,
                           hard_cutoff=sel["hard_cutoff"], strata=sel["strata"], out=str(out))
        return to_argv(s)

    def _pretrainer(self, indices, seed: int, out: Path, label: str):
        def run() -> dict:
            n = self.n_train if indices is None else len(np.load(indices))
            info = self._train_length(n)[1]
            wall = self.launch("pretrain.py", self.pretrain_argv(indices, seed, out, n),
                               f"{label}/pretrain", self.ranks)
            man = json.loads((out / "manifest.json").read_text())
            self._drop_checkpoints(out)
            return {"wall_s": wall, "n_train": n, "steps": man.get("counts", {}).get("steps"),
                    **info}
        return run

    def pretrain_argv(self, indices, seed: int, out: Path, n: int) -> list:
        """pretrain.py on ``indices`` (None: the whole training corpus, --all) for an arm."""
        from bioprune.engine.training.pipeline import PretrainSettings

        t = self.cfg["training"]
        s = PretrainSettings(**self._common(), **self._train_length(n)[0],
                             indices=None if indices is None else str(indices),
                             warmup=t["warmup"], lr=t["lr"], micro_batch_size=t["micro_batch_size"],
                             heldout_size=0, seed=seed, out=str(out))
        return [*to_argv(s), *t["extra_args"]]

    def _evaluator(self, strategy: str, seed: int, sdir: Path, label: str):
        c = self.cfg

        def run() -> dict:
            out = sdir / "eval"
            wall = self.launch(c["evaluation"]["script"], self.eval_argv(strategy, seed, sdir),
                               f"{label}/eval", 1)
            if not (out / "eval.json").exists():
                raise RuntimeError(f"evaluate.py wrote no {out / 'eval.json'}")
            return {"wall_s": wall}
        return run

    def eval_argv(self, strategy: str, seed: int, sdir: Path) -> list:
        """evaluate.py of an arm's model (or of the random-initialised floor, arm ``init``)."""
        from bioprune.engine.evaluation.settings import EvalSettings
        from bioprune.engine.experiments.split import heldout_files

        c = self.cfg
        source = ({"init": "random"} if strategy == "init" else {"run": str(sdir / "pretrain")})
        s = EvalSettings(model=c["model"], model_size=c["model_size"], **source,
                         tasks=self._tasks(strategy), seed=seed, out=str(sdir / "eval"))
        extra = []
        for a in c["evaluation"]["extra_args"]:
            extra += heldout_files(self.out / "data") if a == "{heldout}" else [str(a)]
        return [*to_argv(s), *extra]

    def _tasks(self, strategy: str) -> list[str]:
        """Every arm's tasks; Full and the floor also get the gate-only tasks (probes that must
        first show they resolve Full vs the floor before they are worth running on every arm)."""
        e = self.cfg["evaluation"]
        extra = e["gate_only_tasks"] if strategy in ("full", "init") else []
        return list(dict.fromkeys([*e["tasks"], *extra]))

    def _drop_checkpoints(self, out: Path) -> None:
        if not self.cfg["training"]["keep_checkpoints"]:
            import shutil

            shutil.rmtree(out / "checkpoints", ignore_errors=True)

    # ------------------------------------------------------------------ running

    def check_config(self) -> None:
        """A rerun must use the same settings as the run it continues. Evaluation settings may
        change (finished evaluations are kept: delete arms/*/s*/eval to redo them), and so may
        ``selection.strategies``: it only adds or leaves out arms, and changes no other arm."""
        path = self.out / "experiment.json"
        loose = ("estimate", "config_path", "evaluation")

        def settings(cfg: dict) -> dict:
            out = {k: v for k, v in json.loads(json.dumps(cfg)).items() if k not in loose}
            out.get("selection", {}).pop("strategies", None)
            return out

        if path.exists():
            full_old = json.loads(path.read_text())
            old, keep = settings(full_old), settings(self.cfg)
            if keep != old:
                diff = sorted(k for k in set(old) | set(keep) if old.get(k) != keep.get(k))
                raise SystemExit(f"error: {self.out} holds an experiment with other settings "
                                 f"(differs in: {', '.join(diff)}); use another --out")
            for key, what in (("evaluation", "evaluation settings changed; finished evaluations "
                                             "are kept (delete arms/*/s*/eval to redo them)"),
                              ("selection", "the strategies changed; finished arms are kept")):
                if full_old.get(key) != json.loads(json.dumps(self.cfg[key])):
                    self.log(f"note: {what}")
            write_json(path, self.cfg)
        else:
            write_json(path, self.cfg)

    def run(self, dry_run: bool = False) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        self.check_config()
        t0 = time.time()
        steps = self.plan()
        todo = [s for s in steps if not s.done]
        est = sum(s.estimate_s for s in todo)
        by_phase: dict[str, float] = {}
        for s in todo:
            by_phase[s.phase] = by_phase.get(s.phase, 0.0) + s.estimate_s
        par = sum(s.estimate_s for s in todo if s.phase in ("pretrain", "evaluate"))
        est -= par * (1 - 1 / self.workers)
        self.log(f"experiment {self.cfg['name']}: {len(steps)} steps, {len(steps) - len(todo)} "
                 f"already done, {len(todo)} to run; estimated {est / 60:.1f} min on this machine "
                 f"with {self.workers} worker(s) "
                 f"({', '.join(f'{k} {v / 60:.1f}' for k, v in by_phase.items())} min)")
        if dry_run:
            return {"steps": len(steps), "todo": len(todo), "estimate_s": est}
        wall: dict[str, float] = {}

        def run_step(i: int, s: Step) -> None:
            self.log(f"[{i + 1}/{len(steps)}] {s.name} ...")
            t = time.time()
            info = s.run() or {}
            dt = time.time() - t
            wall[s.phase] = wall.get(s.phase, 0.0) + dt
            write_json(s.dir / MARKER, {"step": s.name, "phase": s.phase, "wall_s": round(dt, 2),
                                        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **info})
            self.log(f"    {s.name} done in {dt:.0f} s (elapsed {(time.time() - t0) / 60:.1f} min)")

        # split, reference, scores, clusters and selections one after another (each depends on
        # the last); then every pretraining, then every evaluation, `workers` at a time
        parallel = ("pretrain", "evaluate")
        for i, s in enumerate(steps):
            if not s.done and s.phase not in parallel:
                run_step(i, s)
        for phase in parallel:
            todo_now = [(i, s) for i, s in enumerate(steps) if s.phase == phase and not s.done]
            if self.workers == 1:
                for i, s in todo_now:
                    run_step(i, s)
                continue
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(self.workers) as pool:
                for f in [pool.submit(run_step, i, s) for i, s in todo_now]:
                    f.result()     # the first failure is raised once the running steps end
        from bioprune.engine.experiments.report import write_report

        t = time.time()
        summary = write_report(self, steps)
        wall["report"] = time.time() - t
        self.write_manifest(steps, wall, time.time() - t0)
        self.log(f"results: {self.out / 'results.md'} (total {(time.time() - t0) / 60:.1f} min)")
        return summary

    def evaluate_ready(self, poll_s: float = 20.0) -> int:
        """Worker mode: run every evaluation whose model is trained and that no one has claimed,
        until every evaluation is done. A claim is a file created exclusively in the step's
        directory, so two workers never run the same evaluation; the main run skips finished
        ones by their markers. Returns the number of evaluations run here."""
        evals = [s for s in self.plan() if s.phase == "evaluate"]
        ran = 0
        while True:
            pending = [s for s in evals if not s.done]
            if not pending:
                self.log(f"evaluate-only: all {len(evals)} evaluations done ({ran} here)")
                return ran
            ready = [s for s in pending if self._trained(s) and self._claim(s)]
            if not ready:
                time.sleep(poll_s)
                continue
            s = ready[0]
            self.log(f"[evaluate-only] {s.name} ...")
            t = time.time()
            info = s.run() or {}
            write_json(s.dir / MARKER, {"step": s.name, "phase": s.phase,
                                        "wall_s": round(time.time() - t, 2),
                                        "worker": "evaluate-only",
                                        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **info})
            ran += 1
            for other in ready[1:]:      # give back the claims not used this round
                (other.dir / CLAIM).unlink(missing_ok=True)

    @staticmethod
    def _trained(step: Step) -> bool:
        pre = step.dir.parent / "pretrain"
        return step.dir.parent.parent.name == "init" or (pre / MARKER).exists()

    @staticmethod
    def _claim(step: Step) -> bool:
        step.dir.mkdir(parents=True, exist_ok=True)
        try:
            os.close(os.open(step.dir / CLAIM, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return True
        except FileExistsError:
            return False

    def write_manifest(self, steps: list[Step], wall_now: dict, total: float) -> None:
        """manifest.json: config, commands, versions, commit, wall time per phase (all runs)."""
        path = self.out / "manifest.json"
        old = json.loads(path.read_text()) if path.exists() else {}
        phase_total: dict[str, float] = {}
        per_step = {}
        for s in steps:
            if s.done:
                m = json.loads((s.dir / MARKER).read_text())
                phase_total[s.phase] = phase_total.get(s.phase, 0.0) + m.get("wall_s", 0.0)
                per_step[s.name] = m
        write_json(path, {
            "experiment": self.cfg["name"], "config": self.cfg, "out": str(self.out),
            "argv": sys.argv, "commit": git_commit(self.root), "versions": versions(),
            "ranks": self.ranks,
            "wall_s_per_phase": {k: round(v, 1) for k, v in phase_total.items()},
            "wall_s_this_invocation": {k: round(v, 1) for k, v in wall_now.items()},
            "wall_s_total_this_invocation": round(total, 1),
            "invocations": old.get("invocations", 0) + 1,
            "steps": per_step,
            "commands": old.get("commands", []) + self.commands,
        })


def git_commit(root: Path) -> dict:
    def g(*a):
        try:
            return subprocess.run(["git", *a], cwd=root, capture_output=True, text=True,
                                  timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"hash": g("rev-parse", "HEAD"), "branch": g("rev-parse", "--abbrev-ref", "HEAD"),
            "dirty": bool(g("status", "--porcelain", "--untracked-files=no"))}


def versions() -> dict:
    """The installed packages (as every run manifest records them) and the MMseqs2 binary."""
    from bioprune.engine.io.manifest import versions as package_versions

    out = package_versions()
    try:
        from bioprune.engine.selection.cluster import mmseqs_binary

        out["mmseqs"] = subprocess.run([mmseqs_binary(), "version"], capture_output=True,
                                       text=True).stdout.strip()
    except Exception:  # noqa: BLE001
        out["mmseqs"] = None
    return out
