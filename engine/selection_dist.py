"""Distributed building blocks of the selector: collectives on NumPy arrays, order-preserving
integer encodings, chunked passes, and exact multi-group radix selection.

Everything here is collective over the current torch.distributed process group (gloo on the CPU,
NCCL on GPUs); with no process group it runs with world = 1 and no communication. Only small
vectors travel: 65536-bin digit histograms per radix round, O(K) statistics, the presence bitmap of
the index check (owner ranges, by all-to-all) and, at the end, the selected indices (to rank 0).
"""
from __future__ import annotations

import numpy as np

DIGIT_BITS = 16
NBINS = 1 << DIGIT_BITS
CHUNK = 1 << 18          # elements per chunk of an elementwise pass (fits the CPU caches)
SLICE = 1 << 24          # local indices per all-to-all round of the index check

_SIGN = np.uint64(1 << 63)
_LOW63 = np.uint64((1 << 63) - 1)
_U16 = np.uint64(0xFFFF)

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
        self.a2a_bytes = 0       # bytes sent by all-to-all (the index check)

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


def top_digit(key: np.ndarray) -> np.ndarray:
    return (key >> np.uint64(64 - DIGIT_BITS)).astype(np.intp)


def chunks(n: int, size: int = CHUNK):
    for a in range(0, n, size):
        yield a, min(n, a + size)


def idx_shifts(n: int) -> list[int]:
    """Digit shifts (most significant first) covering corpus indices 0..n-1."""
    bits = max(1, int(n - 1).bit_length()) if n > 1 else 1
    top = DIGIT_BITS * ((bits + DIGIT_BITS - 1) // DIGIT_BITS) - DIGIT_BITS
    return list(range(top, -1, -DIGIT_BITS))


# ----------------------------------------------------------------------------- radix selection

def lut_from_hist(hist: np.ndarray, need: np.ndarray):
    """One radix round. ``hist`` (G, 65536) global counts of each group's candidates by digit,
    ``need`` (G,) how many of each group's candidates to take. Returns the (G, 65536) uint8 table
    DROP/TAKE/KEEP per (group, digit) and the count still needed from the KEEP bin."""
    hist = np.asarray(hist, dtype=np.int64).reshape(-1, NBINS)
    need = np.asarray(need, dtype=np.int64)
    G = hist.shape[0]
    lut = np.zeros((G, NBINS), dtype=np.uint8)
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


def bincount_blocks(codes: np.ndarray, minlength: int, block: int = 1 << 22) -> np.ndarray:
    """np.bincount over a large integer array in blocks (bounded temporaries)."""
    out = np.zeros(minlength, dtype=np.int64)
    for a, b in chunks(codes.size, block):
        out += np.bincount(codes[a:b], minlength=minlength)[:minlength]
    return out


def radix_take(comm: Comm, key: np.ndarray, idx: np.ndarray, grp: np.ndarray, need: np.ndarray,
               n: int, key_shifts=(32, 16, 0)) -> np.ndarray:
    """Exact multi-group selection on candidate arrays (all ranks, collective).

    Candidates of group g (``grp`` == g) already agree on the key bits above ``key_shifts[0] + 16``.
    Takes, in every group, the ``need[g]`` smallest (key, index) pairs among that group's
    candidates over all ranks; returns the local boolean mask of taken candidates. One
    all-reduce of a (groups still open) x 65536 histogram per digit round: the remaining key
    digits, then the index digits (only if a tie on the full key remains).
    """
    key = np.asarray(key, dtype=np.uint64)
    idx = np.asarray(idx, dtype=np.int64)
    grp = np.asarray(grp, dtype=np.int64)
    need = np.array(need, dtype=np.int64)
    G = need.size
    take = np.zeros(key.size, dtype=bool)
    pos = np.arange(key.size)
    rounds = [("key", s) for s in key_shifts] + [("idx", s) for s in idx_shifts(n)]
    for which, shift in rounds:
        if not (need > 0).any():
            break
        active = np.flatnonzero(need > 0)
        slot_of = np.full(G, -1, dtype=np.int64)
        slot_of[active] = np.arange(active.size)
        slot = slot_of[grp[pos]]
        keep = slot >= 0
        pos, slot = pos[keep], slot[keep]
        src = key[pos] if which == "key" else idx[pos].view(np.uint64)
        dig = ((src >> np.uint64(shift)) & _U16).astype(np.int64)
        flat = slot * NBINS + dig
        hist = comm.allreduce(np.bincount(flat, minlength=active.size * NBINS).astype(np.int64))
        lut, left = lut_from_hist(hist.reshape(active.size, NBINS), need[active])
        st = lut.ravel()[flat]
        take[pos[st == TAKE]] = True
        pos = pos[st == KEEP]
        need[:] = 0
        need[active] = left
    if (need > 0).any():
        raise RuntimeError("radix select: ties remain after all key and index digits "
                           "(repeated corpus indices?)")
    return take


def radix_values(comm: Comm, key: np.ndarray, prefix_digit: np.ndarray, need: np.ndarray,
                 shifts=(32, 16, 0)) -> np.ndarray:
    """Exact order statistics (values only) for several targets over the same elements.

    ``key``: local candidate keys (the union over targets: elements whose top digit is one of
    the targets' digits). Target t wants the ``need[t]``-th smallest key among the elements with
    top digit ``prefix_digit[t]``. Returns the uint64 values, identical on all ranks.
    """
    key = np.asarray(key, dtype=np.uint64)
    T = len(need)
    prefix = np.asarray(prefix_digit, dtype=np.uint64) << np.uint64(64 - DIGIT_BITS)
    need = np.array(need, dtype=np.int64)
    fixed_shift = 64 - DIGIT_BITS   # bits >= fixed_shift are fixed in prefix
    for shift in shifts:
        hist = np.zeros((T, NBINS), dtype=np.int64)
        hi_mask = np.uint64(((1 << 64) - 1) ^ ((1 << fixed_shift) - 1))
        dig_all = ((key >> np.uint64(shift)) & _U16).astype(np.intp)
        masked = key & hi_mask
        for t in range(T):
            m = masked == prefix[t]
            hist[t] = np.bincount(dig_all[m], minlength=NBINS)
        hist = comm.allreduce(hist)
        cum = np.cumsum(hist, axis=1)
        for t in range(T):
            b = int(np.searchsorted(cum[t], need[t], side="left"))
            below = int(cum[t, b - 1]) if b else 0
            need[t] -= below
            prefix[t] |= np.uint64(b) << np.uint64(shift)
        fixed_shift = shift
    return prefix


# ----------------------------------------------------------------------------- validation

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


def _exchange_by_owner(comm: Comm, index: np.ndarray, n: int, slice_size: int = SLICE):
    """Collective: route every local corpus index to the rank owning it (all-to-all, in rounds of
    at most ``slice_size`` local indices, so buffers stay bounded). Yields what this rank receives,
    round by round. All ranks run the same number of rounds."""
    import torch

    dist = comm._dist
    P = comm.world
    bounds = _owner_bounds(n, P)
    rounds = int(comm.allreduce(np.array([-(-index.size // slice_size)], np.int64), "max")[0])
    for k in range(rounds):
        sl = index[k * slice_size:(k + 1) * slice_size]
        owner = np.searchsorted(bounds, sl, side="right") - 1   # empty ranges when n < world
        if owner.size > 1 and (owner[1:] < owner[:-1]).any():
            order = np.argsort(owner, kind="stable")
            sl, owner = sl[order], owner[order]
        send = np.bincount(owner, minlength=P).astype(np.int64)
        recv = torch.empty(P, dtype=torch.int64, device=comm.device)
        dist.all_to_all_single(recv, torch.from_numpy(send).to(comm.device))
        recv = recv.cpu().numpy()
        out = torch.empty(int(recv.sum()), dtype=torch.int64, device=comm.device)
        dist.all_to_all_single(out, torch.from_numpy(np.ascontiguousarray(sl)).to(comm.device),
                               output_split_sizes=recv.tolist(), input_split_sizes=send.tolist())
        comm.rounds += 2
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
            pres[got - base] = True
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
    "check_permutation", "nonfinite_error", "chunks", "idx_shifts", "bincount_blocks",
    "DROP", "TAKE", "KEEP", "NBINS", "CHUNK",
]
