"""From corpus indices to padded token batches with deterministic MLM masks.

Everything random here is a pure function of (seed, corpus index[, position]) through
``bioprune.engine.runtime.hashing``, so a sequence gets the same crop and the same mask whatever
batch, rank or order it lands in (DESIGN: "Per-sample loss", "Randomness").

Masking: 15% of the residue positions (at least one) are chosen — exactly
max(1, round(0.15·L)) of them, the ones with the smallest hash keys — then each chosen position
becomes the mask token (80%), a uniformly random canonical residue (10%) or stays (10%).
BOS/EOS/padding are never chosen and carry no loss.

Expected loss over masks (DESIGN "Per-sample loss"; ``MaskPlan``): a sample's loss is the mean of
its MLM losses under K masks, mask k a pure function of (mask seed, corpus index, k). Two kinds:

- ``draws=K``: K independent random masks as above (mask 0 is the single mask of K = 1, which is
  also the mask training draws for that seed);
- ``covers=C``: C covers; a cover is a random partition of the residue positions into
  P = round(1/rate) disjoint masks (``COVER_PARTS`` = 7 at the MLM rate 0.15; the position of
  hash rank r goes to part r mod P) whose union is every position, so each residue is predicted
  exactly once per cover. Sequences shorter than P residues repeat positions (part j = the
  position of rank j mod L).

``mask_only`` replaces every chosen residue by the mask token instead of 80/10/10: the kept and
random residues are a second source of mask noise (README "Which score estimator").

``make_batch`` lays the K masked copies of sample b out as rows b·K … b·K + K − 1 of one batch:
each copy attends only to itself (as a separate sample), and the per-sample-gradient collector
sums the copies' weight-gradient contributions of a sample before squaring.
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
COVER_PARTS = int(round(1 / MASK_FRACTION))  # 7 masks of ~14% make one cover
_MASK_STRIDE = 1 << 40  # mask k's per-position keys: position + k·2^40 (positions < 2^40)


ESTIMATORS = ("mean", "cross")


@dataclass(frozen=True)
class MaskPlan:
    """Which masks define a sample's loss: ``draws`` random masks, or ``covers`` mask covers, or
    none (``unmasked``: the cross-entropy of every residue given the whole, unmasked sequence,
    the "wild-type marginal" protein LMs use for variant scoring; one deterministic pass).

    ``seed`` is the mask seed (None: the run seed passed to ``make_batch``). ``rate``: the share
    of residues a random draw masks (0.15, the MLM rate; covers always use 1/7)."""
    draws: int = 1
    covers: int = 0
    seed: int | None = None
    unmasked: bool = False
    rate: float = MASK_FRACTION
    # how a score is estimated from the K copies' gradients: "mean" squares their mean;
    # "cross" is the unbiased cross-term over pairs of copies (grad_sample.collector)
    estimator: str = "mean"
    # every chosen residue becomes the mask token (no 10 % random / 10 % kept): less noise per
    # mask, a slightly different loss than training's 80/10/10
    mask_only: bool = False

    def __post_init__(self):
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"mask estimator must be one of {ESTIMATORS} (got {self.estimator!r})")
        if self.estimator == "cross" and self.copies < 2:
            raise ValueError("the cross-term estimator needs at least 2 masked copies")
        if self.covers < 0 or self.draws < 0 or (self.covers == 0 and self.draws < 1):
            raise ValueError(f"mask plan needs draws >= 1 or covers >= 1 (got {self})")
        if self.covers and self.draws not in (0, 1):
            raise ValueError("give random mask draws or mask covers, not both")
        if self.unmasked and (self.covers or self.draws != 1):
            raise ValueError("the unmasked loss takes no mask draws or covers")
        if not 0 < self.rate < 1 or (self.rate != MASK_FRACTION and self.unmasked):
            raise ValueError(f"mask rate {self.rate}: in (0, 1), and not for the unmasked loss")

    @property
    def cover_parts(self) -> int:
        """Masks in one whole cover, P = round(1/rate): 7 at the MLM rate, 2 at 50 % (a mask and
        its complement)."""
        return COVER_PARTS if self.rate == MASK_FRACTION else max(2, int(round(1 / self.rate)))

    @property
    def copies(self) -> int:
        """Masked copies of each sample, K: the cost of a pass relative to one mask."""
        return self.covers * self.cover_parts if self.covers else self.draws

    def describe(self) -> dict:
        kind = "unmasked" if self.unmasked else "cover" if self.covers else "random"
        return {"kind": kind, "draws": 0 if self.covers else self.draws,
                "covers": self.covers, "copies": self.copies, "seed": self.seed,
                "estimator": self.estimator, "rate": self.rate,
                **({"mask_only": True} if self.mask_only else {})}


@dataclass
class Batch:
    index: torch.Tensor    # (B,) int64 corpus indices
    # tokens: (B·K, L) int64, padded with the model's pad id; row b·K + k = mask k of b
    tokens: torch.Tensor
    labels: torch.Tensor   # (B·K, L) int64, IGNORE where no loss
    length: torch.Tensor   # (B,) int32 residues scored (after cropping)
    copies: int = 1        # K, masked copies per sample

    def to(self, device) -> "Batch":
        return Batch(self.index, self.tokens.to(device, non_blocking=True),
                     self.labels.to(device, non_blocking=True), self.length, self.copies)


def crop_window(seed: int, index: int, length: int, max_residues: int) -> tuple[int, int]:
    """[start, stop) of the residues kept; a deterministic window for over-long sequences."""
    if length <= max_residues:
        return 0, length
    span = length - max_residues + 1
    start = int(hashing.hash_keys(seed, [index], hashing.CROP)[0] % np.uint64(span))
    return start, start + max_residues


def n_masked(length: int, rate: float = MASK_FRACTION) -> int:
    return max(1, int(np.floor(rate * length + 0.5)))


def _corrupt(seed: int, index: int, token_ids: np.ndarray, chosen: np.ndarray, k: int,
             bundle: "ModelBundle", mask_only: bool = False):
    """(inputs, labels) with positions ``chosen`` masked 80/10/10 (keys of mask k), or all
    replaced by the mask token (``mask_only``)."""
    L = token_ids.shape[0]
    if mask_only:
        inputs, labels = token_ids.copy(), np.full(L, IGNORE, dtype=np.int64)
        labels[chosen] = token_ids[chosen]
        inputs[chosen] = bundle.mask_id
        return inputs, labels
    at = chosen.astype(np.int64) + k * _MASK_STRIDE
    kind = hashing.uniform(hashing.hash_keys2(seed, index, at, hashing.MASK_KIND))
    pick = hashing.hash_keys2(seed, index, at, hashing.MASK_RESIDUE)
    n_random = np.uint64(len(bundle.random_residue_ids))
    rand_tok = bundle.random_residue_ids[(pick % n_random).astype(np.int64)]
    inputs = token_ids.copy()
    labels = np.full(L, IGNORE, dtype=np.int64)
    labels[chosen] = token_ids[chosen]
    new = np.where(kind < 0.8, bundle.mask_id, np.where(kind < 0.9, rand_tok, token_ids[chosen]))
    inputs[chosen] = new
    return inputs, labels


def mask_sequence(seed: int, index: int, token_ids: np.ndarray, bundle: "ModelBundle", k: int = 0,
                  rate: float = MASK_FRACTION, mask_only: bool = False):
    """Return (inputs, labels) of random mask ``k`` of one sequence of residue tokens (no
    BOS/EOS)."""
    L = token_ids.shape[0]
    keys = hashing.hash_keys2(seed, index, np.arange(L, dtype=np.int64) + k * _MASK_STRIDE,
                              hashing.MASK)
    chosen = np.argsort(keys, kind="stable")[:n_masked(L, rate)]
    return _corrupt(seed, index, token_ids, chosen, k, bundle, mask_only)


def cover_masks(seed: int, index: int, token_ids: np.ndarray, bundle: "ModelBundle", cover: int,
                P: int = COVER_PARTS, mask_only: bool = False):
    """The P masks of cover ``cover``: [(inputs, labels)], masks k = cover·P + j."""
    L = token_ids.shape[0]
    keys = hashing.hash_keys2(seed, index, np.arange(L, dtype=np.int64) + cover * _MASK_STRIDE,
                              hashing.MASK_COVER)
    rank_order = np.argsort(keys, kind="stable")      # positions by hash rank
    out = []
    for j in range(P):
        chosen = rank_order[j::P] if L >= P else rank_order[[j % L]]
        out.append(_corrupt(seed, index, token_ids, np.sort(chosen), cover * P + j, bundle,
                            mask_only))
    return out


def sample_masks(seed: int, index: int, token_ids: np.ndarray, bundle: "ModelBundle",
                 plan: MaskPlan):
    """All K masked copies of one sequence under ``plan``: [(inputs, labels)] * K."""
    if plan.unmasked:      # every residue is a target, nothing is hidden
        return [(token_ids.copy(), token_ids.astype(np.int64))]
    if plan.covers:
        return [m for c in range(plan.covers)
                for m in cover_masks(seed, index, token_ids, bundle, c, plan.cover_parts,
                                     plan.mask_only)]
    return [mask_sequence(seed, index, token_ids, bundle, k, plan.rate, plan.mask_only)
            for k in range(plan.draws)]


def tokenize_residues(residues: np.ndarray, bundle: "ModelBundle") -> np.ndarray:
    ids = bundle.residue_lut[residues]
    if (ids < 0).any():
        bad = chr(int(residues[np.argmax(ids < 0)]))
        raise ValueError(f"residue {bad!r} has no token in {bundle.name}'s vocabulary")
    return ids


def make_batch(corpus, indices, bundle: "ModelBundle", seed: int, max_residues: int | None = None,
               mask_seed: int | None = None, masks: MaskPlan | None = None) -> Batch:
    """Tokenise, crop, mask and pad the sequences ``indices`` of ``corpus``.

    ``seed`` fixes the crops; ``mask_seed`` (default: ``masks.seed``, else ``seed``) the masks, so
    training can draw new masks every epoch while cropping stays put. ``masks`` (default: one
    random mask) gives each sample K masked copies, rows b·K … b·K + K − 1.
    """
    max_residues = min(max_residues or bundle.max_residues, bundle.max_residues)
    masks = masks or MaskPlan()
    if mask_seed is None:
        mask_seed = seed if masks.seed is None else masks.seed
    rows_in, rows_lab, lengths = [], [], []
    for i in indices:
        i = int(i)
        res = corpus.residues(i)
        a, b = crop_window(seed, i, len(res), max_residues)
        toks = tokenize_residues(res[a:b], bundle)
        for inp, lab in sample_masks(mask_seed, i, toks, bundle, masks):
            rows_in.append(inp)
            rows_lab.append(lab)
        lengths.append(b - a)
    R, L = len(rows_in), max(lengths) + 2
    tokens = np.full((R, L), bundle.pad_id, dtype=np.int64)
    labels = np.full((R, L), IGNORE, dtype=np.int64)
    for r, (inp, lab) in enumerate(zip(rows_in, rows_lab)):
        n = len(inp)
        tokens[r, 0] = bundle.bos_id
        tokens[r, 1:n + 1] = inp
        tokens[r, n + 1] = bundle.eos_id
        labels[r, 1:n + 1] = lab
    return Batch(
        index=torch.from_numpy(np.array(indices, dtype=np.int64)),
        tokens=torch.from_numpy(tokens), labels=torch.from_numpy(labels),
        length=torch.as_tensor(np.asarray(lengths, dtype=np.int32)), copies=masks.copies)


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """ℓ(z): MLM cross-entropy averaged over the masked positions of each sample alone, (B,)
    fp32."""
    B, L, V = logits.shape
    ce = torch.nn.functional.cross_entropy(
        logits.float().reshape(B * L, V), labels.reshape(B * L), ignore_index=IGNORE,
        reduction="none").reshape(B, L)
    n = (labels != IGNORE).sum(1).clamp_min(1)
    return ce.sum(1) / n


def expected_loss(logits: torch.Tensor, labels: torch.Tensor, copies: int = 1) -> torch.Tensor:
    """ℓ(z) = (1/K) Σ_k ℓ_k(z): the per-copy losses of ``per_sample_loss`` averaged over each
    sample's K consecutive rows, (B,) fp32."""
    loss = per_sample_loss(logits, labels)
    return loss if copies == 1 else loss.view(-1, copies).mean(1)


def length_sorted_batches(indices: np.ndarray, lengths: np.ndarray, batch_size: int):
    """Split ``indices`` into batches of similar length (less padding); scores do not depend on
    it."""
    order = np.lexsort((indices, lengths[indices] if len(indices) else indices))
    ordered = np.asarray(indices)[order]
    return [ordered[s:s + batch_size] for s in range(0, len(ordered), batch_size)]
