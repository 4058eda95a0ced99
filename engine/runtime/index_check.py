"""Exact collective checks of a sharded table of (corpus index, value) rows: every index of
0..n-1 appears exactly once across the ranks (:func:`check_permutation`: each index travels once,
all-to-all, to the rank owning its range; nothing moves when shares are already aligned) and no
value is NaN or infinite (:func:`nonfinite_error`). Used by the score reader and the selector."""
from __future__ import annotations

import numpy as np

from bioprune.engine.runtime.collectives import Comm, chunks

SLICE = 1 << 22          # local indices per all-to-all round of the index check


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

