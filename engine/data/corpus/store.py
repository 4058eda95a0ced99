"""The built corpus, read-only and memory-mapped (:class:`Corpus`): a corpus of 10^8 records
costs no 10^8 Python objects. Also its cached derived values (content digest, repeated ids) and
the normalised FASTA output."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from bioprune.engine.data.alphabets import Alphabet, get_alphabet
from bioprune.engine.data.corpus.build import build_corpus
from bioprune.engine.data.corpus.layout import ARRAYS, FORMAT_VERSION, META
from bioprune.engine.data.readers import CorpusError
from bioprune.engine.io.atomic import atomic_path

DIGEST = "content_digest.json"   # beside corpus.json: the cached content digest
REPEATS = "repeated_ids.json"    # beside corpus.json: the cached count of repeated ids


class Corpus:
    """Read-only, memory-mapped view of a built corpus directory."""

    def __init__(self, root: Path, meta: dict, arrays: dict):
        self.root = Path(root)
        self._meta = meta
        self._res = arrays["residues"]
        self._off = arrays["offsets"]
        self._len = arrays["lengths"]
        self._ids = arrays["ids"]
        self._idoff = arrays["id_offsets"]
        self._file_starts = np.array([f["first_index"] for f in meta["inputs"]]
                                     + [meta["n_records"]], dtype=np.int64)

    # ---- construction
    @classmethod
    def build(cls, paths, molecule: str, cache_dir, column: str = "sequence",
              id_column: str | None = None, *, overwrite: bool = False, **options) -> "Corpus":
        """Build the corpus of ``paths`` into ``cache_dir`` and open it. A ``cache_dir`` that holds
        anything is an error unless ``overwrite`` (:func:`.load.load_corpus` reuses a matching
        cache instead). ``options``: those of :func:`.build.build_corpus`."""
        return cls.open(build_corpus(paths, molecule, cache_dir, column, id_column,
                                     if_exists="overwrite" if overwrite else "error", **options))

    @classmethod
    def open(cls, cache_dir) -> "Corpus":
        """Open a built corpus (memory-mapped, read-only)."""
        root = Path(cache_dir)
        meta_path = root / META
        try:
            meta = json.loads(meta_path.read_text())
        except FileNotFoundError:
            raise CorpusError("no corpus here (corpus.json missing)", path=root,
                              hint="build it with Corpus.build / load_corpus") from None
        except (OSError, ValueError) as e:
            raise CorpusError(f"unreadable corpus.json ({e})", path=root,
                              hint="delete the cache dir and build again") from None
        if meta.get("format_version") != FORMAT_VERSION:
            raise CorpusError(f"corpus format version {meta.get('format_version')} is not "
                              f"{FORMAT_VERSION}", path=root,
                              hint="delete the cache dir and build again")
        n = int(meta["n_records"])
        expect = {"residues": meta["total_residues"], "offsets": n + 1, "lengths": n,
                  "ids": meta["id_bytes"], "id_offsets": n + 1}
        arrays = {}
        for key, (fn, dt) in ARRAYS.items():
            p = root / fn
            dt = np.dtype(dt)
            try:
                size = p.stat().st_size
            except OSError as e:
                raise CorpusError(f"corpus file {fn} missing ({e})", path=root,
                                  hint="delete the cache dir and build again") from None
            if size != expect[key] * dt.itemsize:
                raise CorpusError(f"corpus file {fn} has {size} bytes, expected "
                                  f"{expect[key] * dt.itemsize}", path=root,
                                  hint="the cache is corrupt: delete it and build again")
            arrays[key] = (np.memmap(p, dtype=dt, mode="r", shape=(expect[key],)) if size
                           else np.zeros(0, dtype=dt))
        return cls(root, meta, arrays)

    # ---- access

    def __len__(self) -> int:
        return int(self._meta["n_records"])

    def __repr__(self) -> str:
        return (f"Corpus({str(self.root)!r}, molecule={self.molecule!r}, records={len(self)}, "
                f"residues={self.total_residues})")

    @property
    def molecule(self) -> str:
        return self._meta["molecule"]

    @property
    def alphabet(self) -> Alphabet:
        return get_alphabet(self.molecule)

    @property
    def stats(self) -> dict:
        """The contents of corpus.json (inputs, counts, length summary, noncanonical counts)."""
        return self._meta

    @property
    def total_residues(self) -> int:
        return int(self._meta["total_residues"])

    def _cached(self, name: str, compute) -> dict:
        """``compute()`` (a JSON-able dict) cached in ``name`` beside corpus.json, keyed by the
        corpus's inputs and size so a rebuilt cache never reuses it; a read-only cache simply
        recomputes."""
        key = {"n_records": len(self), "total_residues": self.total_residues,
               "inputs": self._meta.get("inputs")}
        path = self.root / name
        try:
            saved = json.loads(path.read_text())
            if saved.get("key") == json.loads(json.dumps(key)):
                return saved["value"]
        except (OSError, ValueError, KeyError):
            pass
        value = compute()
        try:
            with atomic_path(path) as tmp:
                Path(tmp).write_text(json.dumps({"key": key, "value": value}))
        except OSError:
            pass
        return value

    def content_digest(self) -> str:
        """BLAKE2b of the normalised sequences in corpus order (lengths, then residues): the
        corpus's identity for later stages, whatever its file names, formats or ids. The same
        records in another order, or one residue changed, give another digest. Computed once per
        cache (a streaming pass over the memory-mapped residues) and kept in ``DIGEST``."""
        def compute() -> dict:
            import hashlib

            h = hashlib.blake2b(digest_size=16)
            h.update(np.ascontiguousarray(self._len, dtype="<i4").tobytes())
            step = 1 << 26
            for start in range(0, self.total_residues, step):
                h.update(memoryview(np.ascontiguousarray(self._res[start:start + step])))
            return {"blake2b": h.hexdigest()}

        return self._cached(DIGEST, compute)["blake2b"]

    def repeated_ids(self) -> dict:
        """{"records": how many records repeat an id seen earlier in the corpus, "example": one
        such id or None}. Vectorised (a 64-bit polynomial hash of every id, then an exact byte
        comparison of the hash collisions), computed once per cache and kept in ``REPEATS``."""
        def compute() -> dict:
            n = len(self)
            off = np.asarray(self._idoff, dtype=np.int64)
            lens = np.diff(off)
            if n == 0 or int(off[-1]) == 0:
                return {"records": 0, "example": None}
            b = np.asarray(self._ids[:int(off[-1])], dtype=np.uint64) + np.uint64(1)
            pos = np.arange(len(b), dtype=np.int64) - np.repeat(off[:-1], lens)
            with np.errstate(over="ignore"):   # arithmetic modulo 2**64 is the point
                terms = b * np.power(np.uint64(1_000_003), pos.astype(np.uint64))
                nz = lens > 0
                h = np.zeros(n, dtype=np.uint64)
                h[nz] = np.add.reduceat(terms, off[:-1][nz])
                h ^= lens.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
            order = np.argsort(h, kind="stable")
            hs = h[order]
            same = np.flatnonzero(hs[1:] == hs[:-1]) + 1     # candidates: hash equal to previous
            seen, repeats, example = {}, 0, None
            for i in np.unique(np.r_[same, same - 1]):       # exact check of the few candidates
                rid = self.record_id(int(order[i]))
                k = (int(hs[i]), rid)
                if k in seen:
                    repeats += 1
                    example = example or rid
                seen[k] = True
            return {"records": repeats, "example": example}

        return self._cached(REPEATS, compute)

    @property
    def lengths(self) -> np.ndarray:
        """int32[n] residue counts (memory-mapped)."""
        return self._len

    @property
    def offsets(self) -> np.ndarray:
        """int64[n+1]: record i is ``residues_flat[offsets[i]:offsets[i+1]]`` (memory-mapped)."""
        return self._off

    @property
    def residues_flat(self) -> np.ndarray:
        """uint8[total_residues]: all normalised residues, concatenated (memory-mapped)."""
        return self._res

    @property
    def paths(self) -> list[str]:
        """The inputs, in corpus order (``DIR::SPLIT`` for a dataset split)."""
        return [f["path"] + ("::" + f["split"] if f.get("split") else "")
                for f in self._meta["inputs"]]

    def _index(self, i) -> int:
        i = int(i)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"corpus index {i} out of range [0, {n})")
        return i

    def residues(self, i: int) -> np.ndarray:
        """The normalised residues of record ``i`` (uint8 ASCII view, read-only)."""
        i = self._index(i)
        return self._res[self._off[i]:self._off[i + 1]]

    def sequence(self, i: int) -> str:
        return self.residues(i).tobytes().decode("ascii")

    def record_id(self, i: int) -> str:
        i = self._index(i)
        return self._ids[self._idoff[i]:self._idoff[i + 1]].tobytes().decode("utf-8", "replace")

    def source(self, i: int) -> tuple[str, int]:
        """(input path, 1-based record number within that input) of corpus index ``i``."""
        i = self._index(i)
        k = int(self.file_of(i))
        return self.paths[k], i - int(self._file_starts[k]) + 1

    def file_of(self, indices) -> np.ndarray:
        """The input (0-based position in ``paths``) each corpus index comes from."""
        return np.searchsorted(self._file_starts, indices, side="right") - 1

    def file_range(self, k: int) -> tuple[int, int]:
        """Corpus indices [start, stop) of the k-th input."""
        return int(self._file_starts[k]), int(self._file_starts[k + 1])

    # ---- output

    def write_fasta(self, indices: Iterable[int], path, line_width: int = 60) -> int:
        """Write the records ``indices`` (in the order given) to FASTA, atomically. Headers are
        ``>{record_id} index={i}``. Returns the number of records written."""
        if line_width <= 0:
            raise ValueError("line_width must be positive")
        idx = np.asarray(indices if not isinstance(indices, (int, np.integer)) else [indices])
        idx = idx.astype(np.int64, copy=False).ravel()
        count = 0
        with atomic_path(path) as tmp:
            with open(tmp, "wb", buffering=1 << 20) as f:
                for i in idx:
                    i = self._index(i)
                    f.write(f">{self.record_id(i)} index={i}\n".encode())
                    r = self._res[self._off[i]:self._off[i + 1]].tobytes()
                    for s in range(0, len(r), line_width):
                        f.write(r[s:s + line_width])
                        f.write(b"\n")
                    count += 1
                f.flush()
                os.fsync(f.fileno())
        return count
