"""Token representations of an encoder: tokenise, crop, batch by length, ``module.embed``.

Cropping (recorded in eval.json): a sequence longer than the limit keeps
- ``ends``: its first ceil(m/2) and last floor(m/2) residues (sequence-level tasks: the N- and
  C-terminal signals of localisation, both ends of an RNA);
- ``head``: its first m residues (per-residue tasks; their labels are cropped alike).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from bioprune.engine.data.batching import tokenize_residues


def crop(res: np.ndarray, m: int, how: str) -> np.ndarray:
    if len(res) <= m:
        return res
    if how == "head":
        return res[:m]
    a = (m + 1) // 2
    return np.concatenate([res[:a], res[len(res) - (m - a):]])


def tokens_of(seq: bytes, bundle, m: int, how: str) -> np.ndarray:
    res = crop(np.frombuffer(seq, dtype=np.uint8), m, how)
    return tokenize_residues(res, bundle)


def pad_batch(token_rows, bundle) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens (B, L+2) with BOS/EOS and padding, residue mask (B, L+2))."""
    L = max(len(t) for t in token_rows) + 2
    tok = np.full((len(token_rows), L), bundle.pad_id, dtype=np.int64)
    mask = np.zeros((len(token_rows), L), dtype=bool)
    for r, t in enumerate(token_rows):
        tok[r, 0] = bundle.bos_id
        tok[r, 1:len(t) + 1] = t
        tok[r, len(t) + 1] = bundle.eos_id
        mask[r, 1:len(t) + 1] = True
    return torch.from_numpy(tok), torch.from_numpy(mask)


def mean_pool(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(1) / m.sum(1).clamp_min(1)


@torch.no_grad()
def embed(bundle, seqs: list, rows, *, max_length: int, mode: str, batch_size: int,
          device, autocast=None, progress: bool = True, desc: str = "embed"):
    """Embeddings of ``seqs[r]`` for ``r`` in ``rows``: mode ``mean`` -> float32 array (n, D);
    mode ``tokens`` -> list of float32 tensors (L_r, D), residues only (BOS/EOS dropped).
    Returns (embeddings, stats)."""
    from tqdm.auto import tqdm

    how = "ends" if mode == "mean" else "head"
    rows = np.asarray(rows, dtype=np.int64)
    toks = [tokens_of(seqs[r], bundle, max_length, how) for r in rows]
    lengths = np.array([len(t) for t in toks])
    order = np.argsort(lengths, kind="stable")
    module = bundle.module.to(device).eval()
    out: list = [None] * len(rows)
    t0 = time.time()
    bar = tqdm(total=len(rows), desc=desc, unit="seq", disable=not progress, leave=False)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        tok, mask = pad_batch([toks[i] for i in idx], bundle)
        tok, mask = tok.to(device), mask.to(device)
        if autocast is not None:
            with autocast():
                h = module.embed(tok)
        else:
            h = module.embed(tok)
        h = h.float()
        if mode == "mean":
            pooled = mean_pool(h, mask).cpu()
            for k, i in enumerate(idx):
                out[i] = pooled[k]
        else:
            h = h.cpu()
            for k, i in enumerate(idx):
                out[i] = h[k, 1:len(toks[i]) + 1].clone()
        bar.update(len(idx))
    bar.close()
    seconds = time.time() - t0
    raw = np.array([len(seqs[r]) for r in rows])
    stats = {"seconds": round(seconds, 3), "sequences": int(len(rows)),
             "seq_per_s": round(len(rows) / max(seconds, 1e-9), 1),
             "cropped": int((raw > max_length).sum()), "crop": how, "max_length": int(max_length)}
    if mode == "mean":
        return (torch.stack(out).numpy() if out else np.zeros((0, 0), np.float32)), stats
    return out, stats
