"""From corpus indices to padded token batches with deterministic MLM masks.

Everything random here is a pure function of (seed, corpus index[, position]) through
``engine.hashing``, so a sequence gets the same crop and the same mask whatever batch, rank or
order it lands in (DESIGN: "Per-sample loss", "Randomness").

Masking: 15% of the residue positions (at least one) are chosen — exactly
max(1, round(0.15·L)) of them, the ones with the smallest hash keys — then each chosen position
becomes the mask token (80%), a uniformly random canonical residue (10%) or stays (10%).
BOS/EOS/padding are never chosen and carry no loss.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from bioprune.engine.runtime import hashing

if TYPE_CHECKING:   # data does not depend on models: a bundle is read by its fields only
    from bioprune.engine.models import ModelBundle

IGNORE = -100  # label of positions without loss (torch.nn.functional.cross_entropy's ignore_index)
MASK_FRACTION = 0.15


@dataclass
class Batch:
    index: torch.Tensor    # (B,) int64 corpus indices
    tokens: torch.Tensor   # (B, L) int64, padded with the model's pad id
    labels: torch.Tensor   # (B, L) int64, IGNORE where no loss
    length: torch.Tensor   # (B,) int32 residues scored (after cropping)

    def to(self, device) -> "Batch":
        return Batch(self.index, self.tokens.to(device, non_blocking=True),
                     self.labels.to(device, non_blocking=True), self.length)


def crop_window(seed: int, index: int, length: int, max_residues: int) -> tuple[int, int]:
    """[start, stop) of the residues kept; a deterministic window for over-long sequences."""
    if length <= max_residues:
        return 0, length
    span = length - max_residues + 1
    start = int(hashing.hash_keys(seed, [index], hashing.CROP)[0] % np.uint64(span))
    return start, start + max_residues


def n_masked(length: int) -> int:
    return max(1, int(np.floor(MASK_FRACTION * length + 0.5)))


def mask_sequence(seed: int, index: int, token_ids: np.ndarray, bundle: ModelBundle):
    """Return (inputs, labels) for one sequence of residue tokens (no BOS/EOS)."""
    L = token_ids.shape[0]
    pos = np.arange(L)
    keys = hashing.hash_keys2(seed, index, pos, hashing.MASK)
    k = n_masked(L)
    chosen = np.argsort(keys, kind="stable")[:k]
    kind = hashing.uniform(hashing.hash_keys2(seed, index, chosen, hashing.MASK_KIND))
    pick = hashing.hash_keys2(seed, index, chosen, hashing.MASK_RESIDUE)
    rand_tok = bundle.random_residue_ids[(pick % np.uint64(len(bundle.random_residue_ids))).astype(np.int64)]
    inputs = token_ids.copy()
    labels = np.full(L, IGNORE, dtype=np.int64)
    labels[chosen] = token_ids[chosen]
    new = np.where(kind < 0.8, bundle.mask_id, np.where(kind < 0.9, rand_tok, token_ids[chosen]))
    inputs[chosen] = new
    return inputs, labels


def tokenize_residues(residues: np.ndarray, bundle: ModelBundle) -> np.ndarray:
    ids = bundle.residue_lut[residues]
    if (ids < 0).any():
        bad = chr(int(residues[np.argmax(ids < 0)]))
        raise ValueError(f"residue {bad!r} has no token in {bundle.name}'s vocabulary")
    return ids


def make_batch(corpus, indices, bundle: ModelBundle, seed: int, max_residues: int | None = None,
               mask_seed: int | None = None) -> Batch:
    """Tokenise, crop, mask and pad the sequences ``indices`` of ``corpus``.

    ``seed`` fixes the crops; ``mask_seed`` (default ``seed``) the masks, so training can draw
    new masks every epoch while cropping stays put.
    """
    max_residues = min(max_residues or bundle.max_residues, bundle.max_residues)
    mask_seed = seed if mask_seed is None else mask_seed
    rows_in, rows_lab, lengths = [], [], []
    for i in indices:
        i = int(i)
        res = corpus.residues(i)
        a, b = crop_window(seed, i, len(res), max_residues)
        toks = tokenize_residues(res[a:b], bundle)
        inp, lab = mask_sequence(mask_seed, i, toks, bundle)
        rows_in.append(inp)
        rows_lab.append(lab)
        lengths.append(b - a)
    B, L = len(rows_in), max(lengths) + 2
    tokens = np.full((B, L), bundle.pad_id, dtype=np.int64)
    labels = np.full((B, L), IGNORE, dtype=np.int64)
    for r, (inp, lab) in enumerate(zip(rows_in, rows_lab)):
        n = len(inp)
        tokens[r, 0] = bundle.bos_id
        tokens[r, 1:n + 1] = inp
        tokens[r, n + 1] = bundle.eos_id
        labels[r, 1:n + 1] = lab
    return Batch(
        index=torch.from_numpy(np.array(indices, dtype=np.int64)),
        tokens=torch.from_numpy(tokens), labels=torch.from_numpy(labels),
        length=torch.as_tensor(np.asarray(lengths, dtype=np.int32)))


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """ℓ(z): MLM cross-entropy averaged over the masked positions of each sample alone, (B,) fp32."""
    B, L, V = logits.shape
    ce = torch.nn.functional.cross_entropy(
        logits.float().reshape(B * L, V), labels.reshape(B * L), ignore_index=IGNORE,
        reduction="none").reshape(B, L)
    n = (labels != IGNORE).sum(1).clamp_min(1)
    return ce.sum(1) / n


def length_sorted_batches(indices: np.ndarray, lengths: np.ndarray, batch_size: int):
    """Split ``indices`` into batches of similar length (less padding); scores do not depend on it."""
    order = np.lexsort((indices, lengths[indices] if len(indices) else indices))
    ordered = np.asarray(indices)[order]
    return [ordered[s:s + batch_size] for s in range(0, len(ordered), batch_size)]
