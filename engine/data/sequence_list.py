"""A small in-memory corpus with the read interface of ``corpus.Corpus``.

For benchmarks on synthetic sequences and for tests that need a handful of sequences; real
corpora go through ``corpus.Corpus`` (memory-mapped, validated).
"""
from __future__ import annotations

import numpy as np


class SequenceList:
    def __init__(self, sequences: list[str], molecule: str = "rna"):
        self.molecule = molecule
        self._res = [np.frombuffer(s.upper().encode("ascii"), dtype=np.uint8) for s in sequences]
        self.lengths = np.array([len(r) for r in self._res], dtype=np.int32)

    def __len__(self) -> int:
        return len(self._res)

    def residues(self, i: int) -> np.ndarray:
        return self._res[i]

    def sequence(self, i: int) -> str:
        return self._res[i].tobytes().decode("ascii")

    def record_id(self, i: int) -> str:
        return f"seq{i}"

    @classmethod
    def random(cls, n: int, length, molecule: str = "rna", seed: int = 0) -> "SequenceList":
        """``n`` random sequences; ``length`` an int or a (low, high) range."""
        rng = np.random.default_rng(seed)
        letters = np.frombuffer(b"ACGU" if molecule == "rna" else b"ACDEFGHIKLMNPQRSTVWY", np.uint8)
        if isinstance(length, int):
            lens = np.full(n, length)
        else:
            lens = rng.integers(length[0], length[1] + 1, size=n)
        return cls([rng.choice(letters, size=int(L)).tobytes().decode() for L in lens], molecule)
