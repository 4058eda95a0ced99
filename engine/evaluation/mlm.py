"""Held-out masked-LM loss and perplexity, with the masks of ``data.batching`` (a pure function
of (mask seed, corpus index)), computed as ``training.loop.evaluate`` does: loss = mean
per-sample ℓ, ppl = exp(token-mean cross-entropy). Mask seed k is ``mask_seed + k`` for k < probe
seeds (``--mlm-mask-seed``, default ``--seed``), so the first value equals pretrain.py's held-out
metric for the same seed and crop length.

Coverage: every input file of ``--mlm-data`` is a group (a source or a family); ``loss@GROUP`` is
the mean per-sample loss of the group's sequences and ``loss_macro`` the mean over groups, so a
model that lost a rare family shows it even when the pooled loss (dominated by the big groups)
hides it.

Comparing models (a pruning study): give every model the same sequences and the same masks:
``--mlm-all`` (every record of --mlm-data, no hashed sample) and a fixed ``--mlm-mask-seed``. The
hashed sample of one model's seed scores a different tenth of the data per seed, and that alone
moved the loss of one fixed model by twice the gap between Full and a 20x smaller subset.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from bioprune.engine.evaluation.tasks import EvalError, TaskData
from bioprune.engine.runtime import hashing


def load_mlm(s, bundle, out: Path) -> TaskData:
    from bioprune.engine.data.corpus import CorpusError, load_corpus

    paths, column, id_column = list(s.mlm_data), s.mlm_column, None
    seed, max_len, indices, source = s.seed, s.max_length, None, "--mlm-data"
    cap = s.mlm_max if s.mlm_max is not None else (None if s.mlm_all else 500)
    run = Path(s.run) if s.run else None
    cfg_digest = None
    if run is not None and (run / "manifest.json").exists():
        man = json.loads((run / "manifest.json").read_text())
        cfg = man.get("config", {})
        if not paths and (run / "heldout.npy").exists():
            paths = list(cfg.get("data") or [])
            column, id_column = cfg.get("column", "sequence"), cfg.get("id_column")
            source = f"{run / 'manifest.json'} (pretraining corpus)"
            indices, ind_src = np.load(run / "heldout.npy"), str(run / "heldout.npy")
            cfg_digest = man.get("corpus_digest")   # absent in runs from before it was recorded
        seed = int(cfg.get("seed", seed))
        max_len = max_len or cfg.get("max_length")
    if not paths:
        raise EvalError("mlm: no corpus; give --mlm-data PATH... (and --mlm-indices NPY) or "
                        "--run a pretraining output holding manifest.json and heldout.npy")
    for p in paths:
        if not Path(p).exists():
            raise EvalError(f"mlm: corpus file {p}: no such file (from {source}; give --mlm-data)")
    cache = Path(s.mlm_cache) if s.mlm_cache else Path(s.out) / "mlm_corpus"
    try:
        corpus = load_corpus(paths, bundle.molecule, cache, column=column, id_column=id_column)
    except CorpusError as e:
        raise EvalError(f"mlm: {e}") from None
    n = len(corpus)
    want = cfg_digest if indices is not None else None
    if want and (here := corpus.content_digest()) != want:
        raise EvalError(f"mlm: the corpus {', '.join(map(str, paths))} is not the one {run} was "
                        f"pretrained on (content digest {here}, {want} in "
                        f"{run / 'manifest.json'}: files edited or reordered since), so its "
                        "heldout.npy would name other records; give --mlm-data and --mlm-indices")
    if s.mlm_indices:
        try:
            indices = np.load(s.mlm_indices)
        except (OSError, ValueError) as e:
            raise EvalError(f"--mlm-indices {s.mlm_indices}: cannot read ({e})") from None
        ind_src = s.mlm_indices
    if indices is None and s.mlm_all:
        indices, ind_src = np.arange(n), "every record of --mlm-data (--mlm-all)"
    if indices is None:
        keys = hashing.hash_keys(seed, np.arange(n), hashing.HELDOUT)
        size = min(cap or n, max(n // 10, 1))
        indices = np.sort(np.argsort(keys, kind="stable")[:size])
        ind_src = (f"hashed sample: the {size} smallest hash(seed={seed}, index, HELDOUT) keys "
                   "(pretrain.py's held-out rule)")
    indices = np.asarray(indices)
    if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer) or \
            (len(indices) and (indices.min() < 0 or indices.max() >= n)):
        raise EvalError(f"mlm: indices ({ind_src}) must be 1-D integers in [0, {n}) of the corpus "
                        f"{paths}")
    total = len(indices)
    if cap is not None and len(indices) > cap:
        keys = hashing.hash_keys(s.split_seed, indices, 103)
        indices = np.sort(indices[np.argsort(keys, kind="stable")[:cap]])
    max_res = min(int(max_len or bundle.max_residues), bundle.max_residues)
    mask_seed = seed if s.mlm_mask_seed is None else int(s.mlm_mask_seed)
    names = group_names(paths)
    groups = corpus.file_of(indices)
    return TaskData("mlm", "mlm", [], [], [], [], "mlm", {
        "data": [str(p) for p in paths], "corpus_size": n, "indices": ind_src,
        "n_heldout_total": int(total), "n_train": 0, "n_test": int(len(indices)),
        "crop_seed": mask_seed, "mask_seeds": [mask_seed + k for k in range(s.probe_seeds)],
        "groups": {names[g]: int((groups == g).sum()) for g in range(len(paths))
                   if (groups == g).any()},
        "max_length": max_res, "_corpus": corpus, "_indices": indices, "_groups": groups,
        "_group_names": names})


def group_names(paths) -> list[str]:
    """One name per input file: its name without extensions (``rfam_RF00005`` for
    ``rna/rfam_RF00005.fasta.gz``), the position appended where two files share a name."""
    stems = [Path(p).name.split(".")[0] for p in paths]
    return [f"{st}#{k}" if stems.count(st) > 1 else st for k, st in enumerate(stems)]


@torch.no_grad()
def evaluate_mlm(task: TaskData, bundle, s, device, progress=True) -> tuple[dict, dict]:
    from tqdm.auto import tqdm

    from bioprune.engine.data.batching import IGNORE, make_batch, per_sample_loss

    corpus, idx = task.info["_corpus"], task.info["_indices"]
    sort = np.argsort(corpus.lengths[idx], kind="stable")
    order, group = idx[sort], task.info["_groups"][sort]
    names = task.info["_group_names"]
    present = [g for g in range(len(names)) if (group == g).any()]
    module = bundle.module.to(device).eval()
    losses, ppls, macro = [], [], []
    by_group: dict[str, list[float]] = {f"loss@{names[g]}": [] for g in present}
    t0 = time.time()
    bar = tqdm(total=len(order) * len(task.info["mask_seeds"]), desc="mlm", unit="seq",
               disable=not progress, leave=False)
    for ms in task.info["mask_seeds"]:
        acc = np.zeros(2)           # token-summed cross-entropy, masked tokens
        per_sample = np.zeros(len(order))
        for st in range(0, len(order), s.embed_batch_size):
            b = make_batch(corpus, order[st:st + s.embed_batch_size], bundle,
                           task.info["crop_seed"],
                           task.info["max_length"], mask_seed=ms).to(device)
            logits = module(b.tokens).float()
            loss = per_sample_loss(logits, b.labels)
            ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), b.labels.flatten(),
                                                   ignore_index=IGNORE, reduction="sum")
            acc += [ce.item(), (b.labels != IGNORE).sum().item()]
            per_sample[st:st + len(loss)] = loss.double().cpu().numpy()
            bar.update(len(loss))
        losses.append(float(per_sample.mean()) if len(per_sample) else 0.0)
        ppls.append(math.exp(acc[0] / max(acc[1], 1)))
        means = [float(per_sample[group == g].mean()) for g in present]
        for g, m in zip(present, means):
            by_group[f"loss@{names[g]}"].append(m)
        macro.append(float(np.mean(means)) if means else float("nan"))
    bar.close()
    sec = time.time() - t0
    return {"loss": losses, "ppl": ppls, "loss_macro": macro, **by_group}, {
        "seconds": round(sec, 3), "seq_per_s": round(len(order) * len(ppls) / max(sec, 1e-9), 1)}
