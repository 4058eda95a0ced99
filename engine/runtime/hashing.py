"""Counter-based hashing: every random decision is a pure function of (seed, corpus index).

DESIGN.md requires that D_sub, the MLM masks, within-stratum draws and Random selection do not
depend on how data or scores are sharded. A counter-based hash (SplitMix64's finaliser) gives each
corpus index its own 64-bit key with no state to share between ranks.

``stream`` separates independent uses of one seed (so the Random coreset is not the same draw as
D_sub when both use seed 0). Stream 0 (``SELECT``) is the plain hash(seed, index) of DESIGN's
selection rules.
"""
from __future__ import annotations

import numpy as np

# Streams: one per independent random decision.
SELECT = 0   # within-stratum picks (CCI) and Random selection
SUBSET = 1   # drawing D_sub
MASK = 2     # which positions are masked
MASK_KIND = 3  # mask token / random residue / keep
MASK_RESIDUE = 4  # the random residue
CROP = 5     # crop window of over-long sequences
SHUFFLE = 6  # training order
HELDOUT = 7  # held-out evaluation sequences of pretraining
MASK_COVER = 8  # the random partition of a mask cover (scoring with --mask-cover)

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser, elementwise on uint64 (wrapping arithmetic)."""
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def _seed_state(seed: int, stream: int) -> np.uint64:
    with np.errstate(over="ignore"):
        s = mix64(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * _GAMMA + np.uint64(stream + 1))
        return mix64(s ^ np.uint64(0xD1B54A32D192ED03))


def hash_keys(seed: int, index, stream: int = SELECT) -> np.ndarray:
    """uint64 key of each corpus index (array-like of non-negative ints) for (seed, stream)."""
    idx = np.asarray(index, dtype=np.int64)
    if idx.size and idx.min() < 0:
        raise ValueError("corpus indices must be non-negative")
    base = _seed_state(seed, stream)
    with np.errstate(over="ignore"):
        return mix64(idx.astype(np.uint64) * _GAMMA + base)


def hash_keys2(seed: int, index, position, stream: int) -> np.ndarray:
    """uint64 key of (corpus index, position) pairs, broadcast: per-residue decisions (masks)."""
    k = hash_keys(seed, index, stream)
    pos = np.asarray(position, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        return mix64(k ^ mix64(pos * _GAMMA + np.uint64(0x632BE59BD9B4E019)))


def uniform(keys: np.ndarray) -> np.ndarray:
    """Map uint64 keys to float64 in [0, 1) using their top 53 bits."""
    top53 = np.asarray(keys, dtype=np.uint64) >> np.uint64(11)
    return top53.astype(np.float64) * (1.0 / (1 << 53))
