"""Experiment configuration: a TOML file → a plain dict with every default filled in, and the arms.

Sections (see configs/experiments/rna-1pct.toml for a commented example)::

    name, model, model_size, molecule, seeds
    [corpus]     files (relative to BIOPRUNE_DATA unless absolute), column, heldout_fraction,
                 heldout_seed, max_length, calibrate (evaluate on a validation part of the
                 training corpus instead of the held-out part), planted (the known-truth corpus;
                 see experiments.split)
    [reference]  init (a weights file: skip the reference pretraining), steps, warmup, seed
    [scoring]    subset_size, finetune_epochs, micro_batch_size, extra_args
    [selection]  rates, base_rate, random_multiples, hard_cutoff, strata, woft_rates,
                 topk_rates (default: rates), single_mask_rates (Top-I / CCI on single-mask
                 scores), cluster_rates,
                 cluster_identity, cluster_coverage, cluster_cov_mode, cluster_mode, strategies
                 (the arms to run besides Full and the floor; a calibration sweep keeps "random")
    [training]   mode ("steps" = compute-matched | "epochs"), steps, epochs, warmup, lr,
                 micro_batch_size, ranks, keep_checkpoints, extra_args, workers (arms trained
                 and evaluated at once, one thread each: 2 on a 2-core CPU)
    [evaluation] tasks, gate_only_tasks (run on Full and the floor only: a probe's power gate
                 before it is worth every arm), floor, extra_args ({heldout} = the held-out
                 FASTA files), script (the
                 evaluator: launch/evaluate.py, or any script with its CLI and eval.json)
    [estimate]   launcher_s, train_step_s, score_seq_s, eval_s  (for the printed time estimate)
"""
from __future__ import annotations

import copy
import math
import tomllib
from pathlib import Path

DEFAULTS: dict = {
    "name": "experiment",
    "model": "rnafm",
    "model_size": "tiny",
    "molecule": None,            # rna for rnafm, protein for esmc
    "seeds": [0, 1, 2],
    "corpus": {"files": [], "column": "sequence", "heldout_fraction": 0.05, "heldout_seed": 0,
               "max_length": 128, "calibrate": False,
               "planted": {"file": None, "share": 0.75, "mutation_rate": 0.03,
                           "heldout_per_file": 50, "seed": 0}},
    "reference": {"init": None, "steps": 1000, "warmup": 100, "seed": 1000},
    "scoring": {"subset_size": 2000, "finetune_epochs": 1, "micro_batch_size": 16,
                "extra_args": []},
    "selection": {"rates": [0.05, 0.10, 0.20], "base_rate": 0.05, "random_multiples": [2, 10],
                  "hard_cutoff": 0.05, "strata": 50, "woft_rates": [0.10],
                  "cluster_rates": [0.10], "cluster_identity": 0.5, "cluster_coverage": 0.8,
                  "cluster_cov_mode": 0, "cluster_mode": "cluster", "single_mask_rates": [],
                  "topk_rates": None,
                  "strategies": ["random", "topk", "cci", "cci_woft", "cluster"]},
    "training": {"mode": "steps", "steps": 1000, "epochs": 10, "warmup": 100, "lr": 1e-4,
                 "micro_batch_size": 16, "ranks": 1, "keep_checkpoints": False, "extra_args": [],
                 "workers": 1},
    "evaluation": {"tasks": ["mlm"], "gate_only_tasks": [], "floor": True, "extra_args": [],
                   "script": "evaluate.py"},
    "estimate": {"launcher_s": 8.0, "train_step_s": 0.045, "score_seq_s": 0.004, "eval_s": 30.0,
                 "select_s": 8.0},
}

# strategy names as they appear in results.csv, and the plot / table order
STRATEGIES = ["full", "random", "topk", "cci", "cci_woft", "topk_1mask", "cci_1mask", "cluster",
              "cci_dedup", "init"]
LABELS = {"full": "Full", "random": "Random", "topk": "Top-I", "cci": "CCI",
          "cci_woft": "CCI w/o ft", "topk_1mask": "Top-I (1 mask)", "cci_1mask": "CCI (1 mask)",
          "cluster": "MMseqs2 cluster",
          "cci_dedup": "CCI on cluster reps", "init": "random init (floor)"}
# strategies that need the influence scores (so the reference model and a scoring run), and the
# scoring run each reads: with adaptation, without it (w/o ft), with the single-mask score
SCORED = {"topk": "score", "cci": "score", "cci_woft": "score_woft", "topk_1mask": "score_1mask",
          "cci_1mask": "score_1mask", "cci_dedup": "score"}
# strategies that need the MMseqs2 cluster table of the training corpus
CLUSTERED = ("cluster", "cci_dedup")


def _merge(base: dict, over: dict, where: str = "") -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if k not in base:
            raise ValueError(f"unknown config key {where}{k!r} (known: {sorted(base)})")
        if isinstance(base[k], dict):
            if not isinstance(v, dict):
                raise ValueError(f"config key {where}{k!r} must be a table")
            out[k] = _merge(base[k], v, f"{where}{k}.")
        else:
            out[k] = v
    return out


def load_config(path, overrides: dict | None = None) -> dict:
    """Read a TOML config, fill in defaults, apply ``overrides`` ({"training.steps": 50, ...})."""
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    cfg = _merge(DEFAULTS, raw)
    for key, value in (overrides or {}).items():
        *parents, leaf = key.split(".")
        d = cfg
        for p in parents:
            d = d[p]
        if leaf not in d:
            raise ValueError(f"unknown config key {key!r}")
        d[leaf] = value
    if cfg["molecule"] is None:
        cfg["molecule"] = "protein" if cfg["model"] == "esmc" else "rna"
    if not cfg["corpus"]["files"]:
        raise ValueError("config: corpus.files is empty")
    if cfg["training"]["mode"] not in ("steps", "epochs"):
        raise ValueError("config: training.mode must be 'steps' (compute-matched) or 'epochs'")
    unknown = set(cfg["selection"]["strategies"]) - set(STRATEGIES)
    if unknown:
        raise ValueError(f"config: selection.strategies has unknown {sorted(unknown)} "
                         f"(known: {STRATEGIES})")
    if not cfg["seeds"]:
        raise ValueError("config: seeds is empty")
    for r in _all_rates(cfg):
        if not 0 < r <= 1:
            raise ValueError(f"config: retention rate {r} outside (0, 1]")
    cfg["config_path"] = str(Path(path).absolute())
    return cfg


def _all_rates(cfg) -> list[float]:
    s = cfg["selection"]
    return [*s["rates"], s["base_rate"], *s["woft_rates"], *s["cluster_rates"],
            *s["single_mask_rates"], *(s["topk_rates"] or [])]


def random_rates(cfg) -> list[float]:
    """Random's rates: every main rate plus base_rate × each multiple below 1 (a multiple that
    reaches the whole corpus IS the Full arm)."""
    s = cfg["selection"]
    rates = set(round(r, 6) for r in s["rates"])
    for m in s["random_multiples"]:
        r = round(s["base_rate"] * m, 6)
        if r < 1:
            rates.add(r)
    return sorted(rates)


def arm_name(strategy: str, rate: float) -> str:
    if strategy in ("full", "init"):
        return strategy
    return f"{strategy}@{rate * 100:g}%"


def arms(cfg) -> list[dict]:
    """Every arm: {name, strategy, rate, seeded_selection}. Full trains on the whole training
    corpus; init is the random-initialised floor (evaluated, never trained)."""
    s = cfg["selection"]
    out = [{"strategy": "full", "rate": 1.0}]
    out += [{"strategy": "random", "rate": r} for r in random_rates(cfg)]
    topk = s["rates"] if s["topk_rates"] is None else s["topk_rates"]
    out += [{"strategy": "topk", "rate": r} for r in topk]
    out += [{"strategy": "cci", "rate": r} for r in s["rates"]]
    out += [{"strategy": "cci_woft", "rate": r} for r in s["woft_rates"]]
    out += [{"strategy": "topk_1mask", "rate": r} for r in s["single_mask_rates"]]
    out += [{"strategy": "cci_1mask", "rate": r} for r in s["single_mask_rates"]]
    out += [{"strategy": "cluster", "rate": r} for r in s["cluster_rates"]]
    # dedup + influence: CCI over the cluster representatives only, beside plain clusters
    out += [{"strategy": "cci_dedup", "rate": r} for r in s["cluster_rates"]]
    keep = set(s["strategies"]) | {f"{k}_1mask" for k in s["strategies"]}
    out = [a for a in out if a["strategy"] == "full" or a["strategy"] in keep]
    if cfg["evaluation"]["floor"]:
        out.append({"strategy": "init", "rate": 0.0})
    for a in out:
        a["name"] = arm_name(a["strategy"], a["rate"])
    names = [a["name"] for a in out]
    if len(set(names)) != len(names):
        raise ValueError(f"config gives an arm twice: {names}")
    return out


def budget(rate: float, n: int) -> int:
    """Coreset size at a retention rate: floor(rate · n), at least 1."""
    return max(1, int(math.floor(rate * n + 1e-9)))
