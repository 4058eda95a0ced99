"""What the passes of one exact selection share (:func:`.exact.select`): the per-rank state, and
the pieces both Top-I / Random (:mod:`.exact`) and CCI (:mod:`.cci`) run on it."""
from __future__ import annotations

import dataclasses
import time

import numpy as np

from bioprune.engine.runtime.collectives import Comm
from bioprune.engine.runtime.hashing import SELECT, hash_keys
from bioprune.engine.selection.radix import encode_desc, radix_take


@dataclasses.dataclass
class Selection:
    """State shared by the passes of one :func:`select` call (all local to this rank, except the
    all-reduced statistics)."""
    comm: Comm
    strategy: str
    seed: int
    hist_bins: int
    quantiles: tuple
    index: np.ndarray = None
    score: np.ndarray = None
    n: int = 0
    budget: int = 0
    beta: float = 0.0
    K: int = 0
    c: int = 0                      # CCI: samples dropped by the hard cut-off
    top: np.ndarray = None          # first 16-bit digit of every local ranking key
    h: np.ndarray = None            # all-reduced histogram of ``top`` (+ Random's key digits)
    codes16: np.ndarray = None      # Random: first 16-bit digit of every local random key
    gmin: float = 0.0
    gmax: float = 0.0
    ssum: float = 0.0
    lut1: np.ndarray = None         # first-round TAKE/KEEP table of the main selection
    left1: list = None
    take_pos: np.ndarray = None     # local positions surely taken (CCI: surely cut)
    keep_pos: np.ndarray = None     # local positions still candidates
    v_digit: list = None            # order statistics: their first digit, rank inside it,
    v_need: list = None             # and their local candidate positions
    v_pos: np.ndarray = None
    vals: np.ndarray = None         # order statistic values (quantiles, then CCI's hi)
    hist_counts: np.ndarray = None
    report: dict = dataclasses.field(default_factory=dict)
    timings: dict = dataclasses.field(default_factory=dict)
    t_start: float = dataclasses.field(default_factory=time.perf_counter)
    tick: float = dataclasses.field(default_factory=time.perf_counter)

    @property
    def random(self) -> bool:
        return self.strategy == "random"

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(now - self.tick, 4)
        self.tick = now


def radix_candidates(run: Selection) -> np.ndarray:
    """The remaining radix rounds of the main selection on the candidates; returns the mask of
    the candidates taken."""
    keep = run.keep_pos
    if run.random:
        ckey = hash_keys(run.seed, run.index[keep], SELECT)
    else:
        ckey = encode_desc(run.score[keep])
    m = radix_take(run.comm, ckey, run.index[keep], np.zeros(keep.size, np.int64), run.left1,
                   run.n, 48)
    run.lap("radix_rounds")
    return m


def concat(parts, dtype=np.int64):
    if not parts:
        return np.zeros(0, dtype=dtype)
    return np.concatenate(parts).astype(dtype, copy=False)
