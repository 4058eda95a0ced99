"""Distributed building blocks of the selector: order-preserving integer encodings of scores and
exact multi-group radix selection over all-reduced digit histograms.

Collective over the current process group (world = 1 without one): only small vectors are
all-reduced (digit histograms per radix round, O(K) statistics).
"""
from __future__ import annotations

import numpy as np

from bioprune.engine.runtime.collectives import Comm

DIGIT_BITS = 16
NBINS = 1 << DIGIT_BITS

_LOW63 = np.uint64((1 << 63) - 1)

DROP, TAKE, KEEP = 0, 1, 2

# Digits of encode_desc keys that hold only non-finite values: +inf / +NaN (0x0000..0x000F) and
# -inf / -NaN (0xFFF0..0xFFFF); every finite float64 has a digit in 0x0010..0xFFEF.
NONFINITE_DIGITS = np.r_[0:0x10, 0xFFF0:0x10000]

# ----------------------------------------------------------------------------- encodings

def encode_desc(score: np.ndarray) -> np.ndarray:
    """uint64 key whose ascending order is the descending order of the float64 scores.

    -0.0 and +0.0 map to the same key (they compare equal). NaN must be excluded beforehand.
    """
    s = np.asarray(score, dtype=np.float64) + 0.0     # -0.0 -> +0.0 (copy; caller's data intact)
    u = s.view(np.uint64)
    neg = s.view(np.int64) >> np.int64(63)              # -1 for negative, 0 otherwise
    flip = (~neg).view(np.uint64) >> np.uint64(1)        # 0x7FFF..F for >= 0, 0 for < 0
    return u ^ flip


def decode_desc(key) -> np.ndarray:
    """Inverse of :func:`encode_desc`."""
    k = np.atleast_1d(np.asarray(key, dtype=np.uint64))
    pos = (k >> np.uint64(63)) == 0
    u = np.where(pos, k ^ _LOW63, k)
    return u.view(np.float64)



def key_digits(first_bits: int) -> list[tuple[int, int]]:
    """The (shift, bits) 16-bit digits of a 64-bit key below its first ``first_bits`` bits."""
    out, shift = [], 64 - first_bits
    while shift > 0:
        b = min(DIGIT_BITS, shift)
        shift -= b
        out.append((shift, b))
    return out


MAX_HIST = 1 << 20       # bins per all-reduced histogram of a radix round (8 MiB of int64)


# ----------------------------------------------------------------------------- radix selection

def lut_from_hist(hist: np.ndarray, need, nbins: int = NBINS):
    """One radix round. ``hist`` (G, nbins): global counts of each group's candidates by digit;
    ``need`` (G,): how many of each group's candidates to take. Returns the (G, nbins) uint8 table
    DROP / TAKE / KEEP per (group, digit) and, per group, the count still needed from its KEEP bin
    (0 when the group is settled)."""
    hist = np.asarray(hist, dtype=np.int64).reshape(-1, nbins)
    need = np.asarray(need, dtype=np.int64).reshape(-1)
    G = hist.shape[0]
    lut = np.zeros((G, nbins), dtype=np.uint8)
    left = np.zeros(G, dtype=np.int64)
    cum = np.cumsum(hist, axis=1)
    for g in range(G):
        r = int(need[g])
        if r <= 0:
            continue
        total = int(cum[g, -1])
        if r >= total:
            if r > total:
                raise RuntimeError(f"radix select: need {r} of {total} candidates")
            lut[g, :] = TAKE
            continue
        b = int(np.searchsorted(cum[g], r, side="left"))   # first digit with cum >= r
        below = int(cum[g, b - 1]) if b else 0
        lut[g, :b] = TAKE
        rem = r - below
        if int(hist[g, b]) == rem:
            lut[g, b] = TAKE
        else:
            lut[g, b] = KEEP
            left[g] = rem
    return lut, left


def radix_take(comm: Comm, key: np.ndarray, idx: np.ndarray, grp: np.ndarray, need, n: int,
               key_bits: int) -> np.ndarray:
    """Exact multi-group selection on candidate arrays (collective).

    The candidates of group g (``grp == g``) already agree on the key bits above the low
    ``key_bits`` bits. In every group, takes the ``need[g]`` smallest (key, corpus index) pairs
    among that group's candidates over all ranks; returns the local boolean mask of the taken
    candidates. One all-reduce per round of a (groups still open) x 2^w histogram, w <= 16 chosen
    so that it has at most MAX_HIST bins: the remaining key bits, then, only if full keys tie,
    the bits of the corpus index.
    """
    key = np.asarray(key, dtype=np.uint64)
    idx = np.asarray(idx, dtype=np.int64)
    grp = np.asarray(grp, dtype=np.int64)
    need = np.array(need, dtype=np.int64).reshape(-1)
    G = need.size
    take = np.zeros(key.size, dtype=bool)
    pos = np.arange(key.size)
    left_bits = {"key": int(key_bits), "idx": max(1, int(n - 1).bit_length())}
    for which in ("key", "idx"):
        while left_bits[which] > 0 and (need > 0).any():
            active = np.flatnonzero(need > 0)
            cap = max(1, MAX_HIST.bit_length() - 1 - int(active.size - 1).bit_length())
            bits = min(DIGIT_BITS, left_bits[which], cap)
            left_bits[which] -= bits
            shift, nb = left_bits[which], 1 << bits
            slot_of = np.full(G, -1, dtype=np.int64)
            slot_of[active] = np.arange(active.size)
            slot = slot_of[grp[pos]]
            keep = slot >= 0
            pos, slot = pos[keep], slot[keep]
            src = key[pos] if which == "key" else idx[pos].view(np.uint64)
            dig = ((src >> np.uint64(shift)) & np.uint64(nb - 1)).astype(np.int64)
            flat = slot * nb + dig
            hist = comm.allreduce(np.bincount(flat, minlength=active.size * nb).astype(np.int64))
            lut, left = lut_from_hist(hist.reshape(active.size, nb), need[active], nb)
            st = lut.ravel()[flat]
            take[pos[st == TAKE]] = True
            pos = pos[st == KEEP]
            need[:] = 0
            need[active] = left
    if (need > 0).any():
        raise RuntimeError("radix select: ties remain after all key and index digits "
                           "(repeated corpus indices?)")
    return take


def radix_values(comm: Comm, keys: list, prefix: list, need, digits) -> np.ndarray:
    """Exact order statistics, by value, of several targets (collective).

    Target t wants the ``need[t]``-th smallest key among its candidates ``keys[t]`` (local
    arrays, which may be shared between targets), all of which agree on the bits ``prefix[t]``
    above the first of ``digits``. Each round all-reduces a (targets x 2^bits) histogram and
    keeps, per target, only the candidates in the chosen bin. Returns the uint64 values.
    """
    T = len(keys)
    prefix = [int(p) for p in prefix]
    need = [int(x) for x in need]
    keys = [np.asarray(k, dtype=np.uint64) for k in keys]
    for shift, bits in digits:
        nb = 1 << bits
        hist = np.zeros((T, nb), dtype=np.int64)
        digs = []
        for t in range(T):
            d = ((keys[t] >> np.uint64(shift)) & np.uint64(nb - 1)).astype(np.intp)
            hist[t] = np.bincount(d, minlength=nb)
            digs.append(d)
        hist = comm.allreduce(hist)
        cum = np.cumsum(hist, axis=1)
        for t in range(T):
            b = int(np.searchsorted(cum[t], need[t], side="left"))
            need[t] -= int(cum[t, b - 1]) if b else 0
            prefix[t] |= b << shift
            keys[t] = keys[t][digs[t] == b]
    return np.array(prefix, dtype=np.uint64)



__all__ = [
    "encode_desc", "decode_desc", "radix_take", "radix_values", "lut_from_hist", "key_digits",
    "MAX_HIST", "DROP", "TAKE", "KEEP", "NBINS", "NONFINITE_DIGITS",
]
