"""Distributed building blocks of the selector: collectives on NumPy arrays, order-preserving
integer encodings, chunked passes, and exact multi-group radix selection.

Everything here is collective over the current torch.distributed process group (gloo on the CPU,
NCCL on GPUs); with no process group it runs with world = 1 and no communication. Only small
vectors are all-reduced (digit histograms per radix round, O(K) statistics); the index check sends
each corpus index once to the rank owning its range (all-to-all, nothing when shares are already
aligned), and at the end the selected indices go to rank 0 (point-to-point).

Chunked passes run over CHUNK elements at a time; :func:`tune_malloc` keeps their temporaries on
the heap (glibc), which makes them several times faster than fresh page-faulting mmaps.
"""
from __future__ import annotations

import numpy as np

DIGIT_BITS = 16
NBINS = 1 << DIGIT_BITS
CHUNK = 1 << 18          # elements per chunk of an elementwise pass (fits the CPU caches)
SLICE = 1 << 22          # local indices per all-to-all round of the index check

_LOW63 = np.uint64((1 << 63) - 1)

DROP, TAKE, KEEP = 0, 1, 2

# Digits of encode_desc keys that hold only non-finite values: +inf / +NaN (0x0000..0x000F) and
# -inf / -NaN (0xFFF0..0xFFFF); every finite float64 has a digit in 0x0010..0xFFEF.
NONFINITE_DIGITS = np.r_[0:0x10, 0xFFF0:0x10000]

_malloc_tuned = False


def tune_malloc() -> None:
    """Keep chunk-sized temporaries on the heap (glibc): by default every NumPy temporary above
    128 KiB is a fresh mmap whose pages fault in on first touch, which makes chunked elementwise
    passes 5-10x slower. Arrays above 64 MiB (the data) are still mapped and returned on free."""
    global _malloc_tuned
    if _malloc_tuned:
        return
    _malloc_tuned = True
    try:
        import ctypes
        import sys

        if not sys.platform.startswith("linux"):
            return
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        libc.mallopt(M_MMAP_THRESHOLD, 64 << 20)
        libc.mallopt(M_TRIM_THRESHOLD, 256 << 20)
    except Exception:  # noqa: BLE001 - only a speed-up
        pass


# ----------------------------------------------------------------------------- communication

class Comm:
    """Collectives on NumPy data over the default process group (or none: world = 1)."""

    def __init__(self):
        import torch
        import torch.distributed as dist

        self._torch = torch
        self._dist = dist
        if dist.is_available() and dist.is_initialized():
            self.rank = dist.get_rank()
            self.world = dist.get_world_size()
            backend = dist.get_backend()
            self.device = (torch.device("cuda", torch.cuda.current_device())
                           if backend == "nccl" else torch.device("cpu"))
        else:
            self.rank, self.world = 0, 1
            self.device = torch.device("cpu")
        self.rounds = 0          # all-reduce calls (for the benchmark's projection)
        self.bytes = 0           # bytes all-reduced
        self.a2a_calls = 0       # all-to-all calls (the index check)
        self.a2a_bytes = 0       # bytes sent by all-to-all

    # -- all-reduce
    def allreduce(self, arr: np.ndarray, op: str = "sum") -> np.ndarray:
        arr = np.ascontiguousarray(arr)
        self.rounds += 1
        self.bytes += arr.nbytes
        if self.world == 1:
            return arr.copy()
        torch, dist = self._torch, self._dist
        t = torch.from_numpy(arr.copy())
        if self.device.type != "cpu":
            t = t.to(self.device)
        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN,
               "bor": dist.ReduceOp.BOR}
        dist.all_reduce(t, op=ops[op])
        return t.cpu().numpy()

    def sum_int(self, x: int) -> int:
        return int(self.allreduce(np.array([x], dtype=np.int64))[0])

    def max_float(self, x: float) -> float:
        return float(self.allreduce(np.array([x], dtype=np.float64), "max")[0])

    def min_float(self, x: float) -> float:
        return float(self.allreduce(np.array([x], dtype=np.float64), "min")[0])

    def any(self, flag: bool) -> bool:
        return bool(self.allreduce(np.array([1 if flag else 0], dtype=np.int64), "max")[0])

    # -- small objects
    def allgather_object(self, obj) -> list:
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        self._dist.all_gather_object(out, obj)
        return out

    # -- the selected indices (variable length) to rank 0, by point-to-point messages
    def gather_to_root(self, arr: np.ndarray) -> list[np.ndarray] | None:
        arr = np.ascontiguousarray(arr, dtype=np.int64)
        if self.world == 1:
            return [arr]
        counts = np.zeros(self.world, dtype=np.int64)
        counts[self.rank] = arr.size
        counts = self.allreduce(counts)
        torch, dist = self._torch, self._dist
        if self.rank == 0:
            parts = [arr]
            for src in range(1, self.world):
                buf = torch.empty(int(counts[src]), dtype=torch.int64, device=self.device)
                if counts[src]:
                    dist.recv(buf, src=src)
                parts.append(buf.cpu().numpy())
            return parts
        if arr.size:
            dist.send(torch.from_numpy(arr).to(self.device), dst=0)
        return None


def agree(comm: Comm, error_local: str | None) -> str | None:
    """Make a (possibly rank-local) error collective: every rank gets the first rank's message."""
    if not comm.any(error_local is not None):
        return None
    msgs = comm.allgather_object(error_local)
    return next(m for m in msgs if m is not None)


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


def chunks(n: int, size: int = CHUNK):
    for a in range(0, n, size):
        yield a, min(n, a + size)


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


def nonfinite_error(comm: Comm, index: np.ndarray, score: np.ndarray, limit: int = 10,
                    bad_local: int | None = None) -> str | None:
    """Collective: an error message naming the first ``limit`` corpus indices whose score is NaN
    or infinite (same on every rank), or None."""
    if bad_local is None:
        bad_local = 0
        for a, b in chunks(score.size, 1 << 22):
            bad_local += int(np.count_nonzero(~np.isfinite(score[a:b])))
    bad = comm.sum_int(bad_local)
    if not bad:
        return None
    first = []
    if bad_local:
        m = ~np.isfinite(score)
        first = np.sort(index[m])[:limit].tolist()
    allfirst = sorted(i for part in comm.allgather_object(first) for i in part)[:limit]
    return (f"{bad} score(s) are NaN or infinite; first corpus indices: {allfirst}"
            f"{' ...' if bad > len(allfirst) else ''}")


def _owner_bounds(n: int, world: int) -> np.ndarray:
    """Rank r owns the corpus indices [bounds[r], bounds[r + 1]) in the index check."""
    return np.array([r * n // world for r in range(world + 1)], dtype=np.int64)


def _owners(sl: np.ndarray, bounds: np.ndarray, n: int, P: int):
    """Owner rank of each index: r with bounds[r] <= i < bounds[r + 1] (skipping empty ranges).
    An int when one rank owns the whole slice (the common case: shares of contiguous parts)."""
    if sl.size == 0:
        return 0
    lo, hi = int(sl.min()), int(sl.max())
    r_lo = int(np.searchsorted(bounds, lo, side="right")) - 1
    if hi < bounds[r_lo + 1]:
        return r_lo
    owner = (sl * P) // n                        # bounds[owner] <= i always; fix the upper side
    while True:
        up = sl >= bounds[owner + 1]
        if not up.any():
            return owner
        owner += up


def _exchange_by_owner(comm: Comm, index: np.ndarray, n: int, slice_size: int = SLICE):
    """Collective: route every local corpus index to the rank owning it (all-to-all, in rounds of
    at most ``slice_size`` local indices, so buffers stay bounded; the indices this rank owns
    itself do not travel). Yields the arrays this rank gets. Same number of rounds on all ranks."""
    import torch

    dist = comm._dist
    P, me = comm.world, comm.rank
    bounds = _owner_bounds(n, P)
    rounds = int(comm.allreduce(np.array([-(-index.size // slice_size)], np.int64), "max")[0])
    for k in range(rounds):
        sl = index[k * slice_size:(k + 1) * slice_size]
        owner = _owners(sl, bounds, n, P)
        send = np.zeros(P, dtype=np.int64)
        if isinstance(owner, int):
            send[owner] = sl.size
        else:
            if (owner[1:] < owner[:-1]).any():
                order = np.argsort(owner, kind="stable")
                sl, owner = sl[order], owner[order]
            send += np.bincount(owner, minlength=P)
        a, mine = int(send[:me].sum()), int(send[me])
        yield sl[a:a + mine]                                 # owned here: no communication
        send[me] = 0
        sl = np.concatenate([sl[:a], sl[a + mine:]]) if send.any() else sl[:0]
        recv = torch.empty(P, dtype=torch.int64, device=comm.device)
        dist.all_to_all_single(recv, torch.from_numpy(send).to(comm.device))
        recv = recv.cpu().numpy()
        out = torch.empty(int(recv.sum()), dtype=torch.int64, device=comm.device)
        dist.all_to_all_single(out, torch.from_numpy(np.ascontiguousarray(sl)).to(comm.device),
                               output_split_sizes=recv.tolist(), input_split_sizes=send.tolist())
        comm.a2a_calls += 2
        comm.a2a_bytes += 8 * (int(send.sum()) + P)
        yield out.cpu().numpy()


def check_permutation(comm: Comm, index: np.ndarray, n: int, total: int | None = None,
                      limit: int = 10, error=ValueError, presence: bool = True) -> None:
    """Collective and exact: raise ``error`` on every rank unless the indices held by all ranks
    are exactly a permutation of 0..n-1.

    Row count (all-reduced) == n and every index of 0..n-1 present <=> each index exactly once.
    Presence: each rank owns a contiguous range of n / world indices and receives, by all-to-all,
    the indices that fall in it (O(share) work and memory per rank, one bool per owned index).
    ``presence=False`` only checks the range.
    """
    index = np.asarray(index, dtype=np.int64)
    if total is None:
        total = comm.sum_int(index.size)
    bad_local = 0
    if index.size:
        lo, hi = int(index.min()), int(index.max())
        if lo < 0 or hi >= n:
            bad_local = int(np.count_nonzero((index < 0) | (index >= n)))
    bad = comm.sum_int(bad_local)
    if bad:
        first = []
        if bad_local:
            first = np.sort(index[(index < 0) | (index >= n)])[:limit].tolist()
        allfirst = sorted(i for p in comm.allgather_object(first) for i in p)[:limit]
        raise error(f"{bad} row(s) have a corpus index outside 0..{n - 1} (n = {n}): {allfirst}")
    if not presence:
        return
    if comm.world == 1:
        base = 0
        pres = np.zeros(n, dtype=bool)
        pres[index] = True
    else:
        bounds = _owner_bounds(n, comm.world)
        base = int(bounds[comm.rank])
        pres = np.zeros(int(bounds[comm.rank + 1]) - base, dtype=bool)
        for got in _exchange_by_owner(comm, index, n):
            for a, b in chunks(got.size):
                pres[got[a:b] - base] = True
    missing_local = pres.size - int(np.count_nonzero(pres))
    missing = comm.sum_int(missing_local)
    if missing == 0 and total == n:
        return
    first_missing = (np.flatnonzero(~pres)[:limit] + base).tolist() if missing_local else []
    del pres
    first_missing = sorted(i for p in comm.allgather_object(first_missing) for i in p)[:limit]
    repeated = total - (n - missing)
    first_rep = _first_repeated(comm, index, n, limit) if repeated > 0 else []
    parts = []
    if missing:
        parts.append(f"{missing} corpus index(es) missing (first: {first_missing})")
    if repeated:
        parts.append(f"{repeated} row(s) repeat an index (first repeated: {first_rep})")
    raise error(f"the scores must hold each corpus index 0..{n - 1} exactly once "
                f"({total} rows, n = {n}): " + "; ".join(parts))


def _first_repeated(comm: Comm, index: np.ndarray, n: int, limit: int) -> list[int]:
    """Error path only: the smallest corpus indices that occur more than once (over all ranks)."""
    if comm.world == 1:
        got = [index]
    else:
        got = list(_exchange_by_owner(comm, index, n))
    allmine = np.concatenate(got) if got else np.zeros(0, np.int64)
    u, cnt = np.unique(allmine, return_counts=True)
    rep = u[cnt > 1][:limit].tolist()
    return sorted(i for p in comm.allgather_object(rep) for i in p)[:limit]


__all__ = [
    "Comm", "agree", "encode_desc", "decode_desc", "radix_take", "radix_values", "lut_from_hist",
    "check_permutation", "nonfinite_error", "chunks", "key_digits", "tune_malloc", "MAX_HIST",
    "DROP", "TAKE", "KEEP", "NBINS", "CHUNK", "NONFINITE_DIGITS",
]
