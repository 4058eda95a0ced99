"""Probe heads and their training, through Hugging Face ``accelerate``.

``Accelerator()`` on a CPU is one process in fp32; under ``accelerate launch`` it is one process
per GPU (the training batches are sharded, gradients all-reduced) with the configured mixed
precision. Every process predicts the whole test set with the unwrapped head, so results do not
depend on the number of processes beyond float round-off; only the main process writes.

Heads (inputs standardised with the training rows' mean/std):
- ``linear``: Linear(D, out);
- ``mlp``: Linear(D, hidden) -> ReLU -> Linear(hidden, out);
- ``pairwise``: Linear(D, c) per token -> outer concatenation (L, L, 2c) -> Conv2d(2c, c, 3) ->
  ReLU -> Conv2d(c, c, 3) -> ReLU -> Conv2d(c, 1, 1) -> symmetrised per-pair logit; BCE over the
  pairs j - i > 3; pairs are decoded greedily (highest probability first, one partner per base)
  above a threshold chosen on training sequences (grid THRESHOLDS, best mean F1 on up to 32).
Regression targets are standardised on the training rows; loss MSE. Classification: CE.
"""
from __future__ import annotations

import contextlib
import copy
import time

import numpy as np
import torch
from torch import nn


@contextlib.contextmanager
def cpu_threads(accelerator, n: int = 1):
    """Probe heads are tiny: on a CPU, one thread avoids OpenMP spin contention (measured 10-100x
    faster per step on a busy 2-core machine than torch's default)."""
    if accelerator.device.type != "cpu":
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _bar(total, desc, progress):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="seq", disable=not progress, leave=False)


def make_head(kind: str, dim: int, n_out: int, hidden: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(dim, n_out)
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, n_out))


def _standardise(X_tr: torch.Tensor):
    mu = X_tr.mean(0, keepdim=True)
    sd = X_tr.std(0, keepdim=True).clamp_min(1e-6) if len(X_tr) > 1 else torch.ones_like(mu)
    return mu, sd


def _targets(kind: str, y_tr, n_out: int):
    """(training targets, loss, output width, decode): regression targets are standardised and
    ``decode`` maps the head's outputs back to the label scale; classification targets are class
    ids and ``decode`` takes the argmax."""
    if kind == "regression":
        y = torch.as_tensor(np.asarray(y_tr), dtype=torch.float32)
        mu, sd = y.mean(), y.std().clamp_min(1e-12)
        return (((y - mu) / sd).unsqueeze(1), nn.MSELoss(), 1,
                lambda out: (out[:, 0] * sd + mu).numpy())
    return (torch.as_tensor(np.asarray(y_tr), dtype=torch.long), nn.CrossEntropyLoss(), n_out,
            lambda out: out.argmax(1).numpy())


def _fit_predict(X_tr, y_tr, X_te, *, kind: str, n_out: int, head: str, hidden: int, epochs: int,
                lr: float, batch_size: int, weight_decay: float, seed: int, accelerator,
                progress: bool = True, desc: str = "probe"):
    """Train a head on (X_tr, y_tr), return (predictions on X_te, stats). ``kind`` is
    classification (y ints, predictions class ids) or regression (y floats)."""
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader

    set_seed(seed)
    X_tr = torch.as_tensor(np.asarray(X_tr), dtype=torch.float32)
    X_te = torch.as_tensor(np.asarray(X_te), dtype=torch.float32)
    mu, sd = _standardise(X_tr)
    X_tr, X_te = (X_tr - mu) / sd, (X_te - mu) / sd
    y, loss_fn, n_out, decode = _targets(kind, y_tr, n_out)
    model = make_head(head, X_tr.shape[1], n_out, hidden)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    # a dataset of row numbers, gathered per batch in one indexing op (a TensorDataset collates
    # row by row: ~10x slower for per-residue probes)
    dl = DataLoader(range(len(X_tr)), batch_size=batch_size, shuffle=True, generator=g,
                    collate_fn=lambda ix: (X_tr[ix], y[ix]))
    model, opt, dl = accelerator.prepare(model, opt, dl)
    t0, seen = time.time(), 0
    bar = _bar(epochs * len(X_tr), desc, progress)
    model.train()
    for _ in range(epochs):
        for xb, yb in dl:
            loss = loss_fn(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            opt.step()
            seen += len(xb)
            bar.update(len(xb))
    bar.close()
    seconds = time.time() - t0
    net = accelerator.unwrap_model(model).eval()
    with torch.no_grad():
        out = torch.cat([net(X_te[s:s + 8192].to(accelerator.device)).float().cpu()
                         for s in range(0, len(X_te), 8192)]) \
            if len(X_te) else torch.zeros(0, n_out)
    pred = decode(out)
    return pred, {"seconds": seconds, "seq_per_s": seen / max(seconds, 1e-9)}


# ------------------------------------------------------------------------ pairwise (base pairs)

THRESHOLDS = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


class PairHead(nn.Module):
    def __init__(self, dim: int, channels: int):
        super().__init__()
        c = channels
        self.proj = nn.Linear(dim, c)
        self.conv = nn.Sequential(nn.Conv2d(2 * c, c, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, 1, 1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:   # (B, L, D) -> (B, L, L)
        z = self.proj(h)
        L = z.shape[1]
        pair = torch.cat([z.unsqueeze(2).expand(-1, -1, L, -1),
                          z.unsqueeze(1).expand(-1, L, -1, -1)], dim=-1)
        logit = self.conv(pair.permute(0, 3, 1, 2)).squeeze(1)
        return (logit + logit.transpose(1, 2)) / 2


def _pair_target(pairs, L):
    t = torch.zeros(L, L)
    for i, j in pairs:
        t[i, j] = t[j, i] = 1.0
    return t


def _fit_predict_pairs(H_tr, P_tr, H_te, *, channels: int, epochs: int, lr: float, seed: int,
                       accelerator, progress: bool = True, desc: str = "ss-probe",
                       tune_on: int = 32, batch_size: int = 8):
    """Train a PairHead on per-token embeddings ``H_tr`` (list of (L, D)) with pairs ``P_tr``;
    return (list of predicted pair lists for ``H_te``, stats with the decoding threshold).
    Batches are groups of ``batch_size`` sequences of similar length (padded; pad pairs carry
    no loss), visited in a seeded random order each epoch."""
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader

    from bioprune.engine.evaluation.metrics import greedy_pairs

    set_seed(seed)
    allH = torch.cat(list(H_tr))
    mu, sd = _standardise(allH)
    dim = allH.shape[1]
    model = PairHead(dim, channels)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    order = np.argsort([len(h) for h in H_tr], kind="stable")
    groups = [order[s:s + batch_size].tolist() for s in range(0, len(order), batch_size)]
    g = torch.Generator().manual_seed(seed)
    dl = DataLoader(groups, batch_size=1, shuffle=True, generator=g, collate_fn=lambda b: b[0])
    model, opt, dl = accelerator.prepare(model, opt, dl)
    dev = accelerator.device
    t0, seen = time.time(), 0
    bar = _bar(epochs * len(H_tr), desc, progress)
    model.train()
    for _ in range(epochs):
        for grp in dl:
            L = max(len(H_tr[i]) for i in grp)
            h = torch.zeros(len(grp), L, dim)
            tgt = torch.zeros(len(grp), L, L)
            valid = torch.zeros(len(grp), L, L, dtype=torch.bool)
            for k, i in enumerate(grp):
                n = len(H_tr[i])
                h[k, :n] = (H_tr[i] - mu) / sd
                tgt[k, :n, :n] = _pair_target(P_tr[i], n)
                valid[k, :n, :n] = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=4)
            h, tgt, valid = h.to(dev), tgt.to(dev), valid.to(dev)
            logit = model(h)
            loss = nn.functional.binary_cross_entropy_with_logits(logit[valid], tgt[valid])
            opt.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            opt.step()
            seen += len(grp)
            bar.update(len(grp))
    bar.close()
    seconds = time.time() - t0
    net = accelerator.unwrap_model(model).eval()

    def probs(H):
        with torch.no_grad():
            return [torch.sigmoid(net(((h - mu) / sd).unsqueeze(0).to(dev))[0])
                    .float().cpu().numpy() for h in H]

    # threshold: best F1 over the pooled candidate pairs of up to ``tune_on`` training sequences
    from sklearn.metrics import f1_score

    from bioprune.engine.evaluation.metrics import pair_matrix

    tune = list(range(min(tune_on, len(H_tr))))
    tune_probs = probs([H_tr[i] for i in tune])
    truth = np.concatenate([pair_matrix(P_tr[i], len(p))[np.triu_indices(len(p), 1)]
                            for i, p in zip(tune, tune_probs)])
    f1 = []
    for thr in THRESHOLDS:
        guess = np.concatenate([pair_matrix(greedy_pairs(p, thr), len(p))
                                [np.triu_indices(len(p), 1)] for p in tune_probs])
        f1.append(f1_score(truth, guess, zero_division=0))
    thr = THRESHOLDS[int(np.argmax(f1))]
    pred = [greedy_pairs(p, thr) for p in probs(H_te)]
    return pred, {"seconds": seconds, "seq_per_s": seen / max(seconds, 1e-9), "threshold": thr}


# ------------------------------------------------------------------- fine-tuning (encoder + head)

class PooledModel(nn.Module):
    def __init__(self, encoder: nn.Module, head: nn.Module):
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, tok, mask):
        from bioprune.engine.evaluation.embed import mean_pool

        return self.head(mean_pool(self.encoder.embed(tok).float(), mask))


def finetune_predict(bundle, tok_tr, y_tr, tok_te, *, kind: str, n_out: int, head: str,
                     hidden: int, epochs: int, lr: float, batch_size: int, weight_decay: float,
                     seed: int, accelerator, progress: bool = True, desc: str = "finetune"):
    """Fine-tune a copy of the encoder with a pooled head on token rows ``tok_tr``."""
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader

    from bioprune.engine.evaluation.embed import pad_batch

    set_seed(seed)
    y, loss_fn, n_out, decode = _targets(kind, y_tr, n_out)
    encoder = copy.deepcopy(bundle.module).train()
    dim = encoder.embed(pad_batch([tok_tr[0]], bundle)[0]).shape[-1]
    model = PooledModel(encoder, make_head(head, dim, n_out, hidden))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                            weight_decay=weight_decay)

    def collate(ix):
        tok, mask = pad_batch([tok_tr[i] for i in ix], bundle)
        return tok, mask, y[list(ix)]

    g = torch.Generator().manual_seed(seed)
    dl = DataLoader(list(range(len(tok_tr))), batch_size=batch_size, shuffle=True, generator=g,
                    collate_fn=collate)
    model, opt, dl = accelerator.prepare(model, opt, dl)
    t0, seen = time.time(), 0
    bar = _bar(epochs * len(tok_tr), desc, progress)
    for _ in range(epochs):
        for tok, mask, yb in dl:
            with accelerator.autocast():
                loss = loss_fn(model(tok, mask).float(), yb)
            opt.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            opt.step()
            seen += len(tok)
            bar.update(len(tok))
    bar.close()
    seconds = time.time() - t0
    net = accelerator.unwrap_model(model).eval()
    outs = []
    order = np.argsort([len(t) for t in tok_te], kind="stable")
    with torch.no_grad():
        for s in range(0, len(order), 32):
            ix = order[s:s + 32]
            tok, mask = pad_batch([tok_te[i] for i in ix], bundle)
            outs.append((ix, net(tok.to(accelerator.device),
                                 mask.to(accelerator.device)).float().cpu()))
    out = torch.zeros(len(tok_te), n_out)
    for ix, o in outs:
        out[torch.as_tensor(ix)] = o
    pred = decode(out)
    return pred, {"seconds": seconds, "seq_per_s": seen / max(seconds, 1e-9)}


def fit_predict(*args, accelerator, **kw):
    with cpu_threads(accelerator):
        return _fit_predict(*args, accelerator=accelerator, **kw)


def fit_predict_pairs(*args, accelerator, **kw):
    with cpu_threads(accelerator):
        return _fit_predict_pairs(*args, accelerator=accelerator, **kw)
