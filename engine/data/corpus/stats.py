"""corpus.json's numbers: per-input and corpus-wide counts, the length summary (from a
histogram of record lengths, so ranks can add theirs), the accepted non-canonical letters,
and the "build" section (timings)."""
from __future__ import annotations

import time

import numpy as np

from bioprune.engine.data.alphabets import Alphabet
from bioprune.engine.data.corpus.layout import FORMAT_VERSION
from bioprune.engine.data.readers import CorpusError, InputSpec


def _median_from_hist(hist: np.ndarray, n: int) -> float:
    cum = np.cumsum(hist)
    lo = int(np.searchsorted(cum, (n - 1) // 2 + 1))
    hi = int(np.searchsorted(cum, n // 2 + 1))
    return (lo + hi) / 2



def extra_counts(alpha: Alphabet, raw_counts: np.ndarray) -> dict:
    """Counts of the accepted non-canonical letters (after normalisation), e.g. {'N': 12}."""
    norm = np.bincount(alpha.lut, weights=raw_counts, minlength=256)
    return {c: int(norm[ord(c)]) for c in alpha.extra if norm[ord(c)]}



def add_hist(hist: np.ndarray, offs: np.ndarray) -> np.ndarray:
    """``hist`` (counts of record lengths) plus the lengths of the records at ``offs``."""
    bc = np.bincount(np.diff(offs))
    if len(bc) > len(hist):
        hist = np.concatenate([hist, np.zeros(len(bc) - len(hist), np.int64)])
    hist[: len(bc)] += bc
    return hist



def sum_hists(hists) -> np.ndarray:
    """One length histogram from several (of different lengths)."""
    out = np.zeros(max(len(h) for h in hists), np.int64)
    for h in hists:
        out[:len(h)] += h
    return out


def file_meta(ident: dict, spec: InputSpec, alpha: Alphabet, on_invalid: str, first_index: int,
               records: int, residues: int, nrej: int, fcounts: np.ndarray, fstops: int) -> dict:
    fmeta = {**ident, "spec": spec.spec, "first_index": first_index, "records": records,
             "residues": residues, alpha.extra_class: extra_counts(alpha, fcounts)}
    if on_invalid == "skip":
        fmeta["rejected"] = nrej
    if alpha.stop is not None:
        fmeta["stripped_stops"] = fstops
    return fmeta



def corpus_meta(alpha: Alphabet, column: str, id_column, on_invalid: str, files_meta: list,
                 n: int, nres: int, nid: int, hist: np.ndarray, counts: np.ndarray, stops: int,
                 nrejected: int) -> dict:
    """corpus.json without its "build" section (the same for any way of building)."""
    if n == 0:
        raise CorpusError("no valid records in the inputs", hint="check --molecule and the files")
    if n >= 2**63 - 1 or (hist.size and len(hist) - 1 >= 2**31):
        raise CorpusError("a record is longer than 2^31 - 1 residues")
    lens_present = np.flatnonzero(hist)
    # normalised letter counts from raw byte counts (lowercase and T fold in)
    extra = extra_counts(alpha, counts)
    meta = {
        "format_version": FORMAT_VERSION,
        "molecule": alpha.name,
        "column": column,
        "id_column": id_column,
        "inputs": files_meta,
        "n_records": n,
        "total_residues": nres,
        "id_bytes": nid,
        "length": {
            "min": int(lens_present[0]),
            "median": _median_from_hist(hist, n),
            "max": int(lens_present[-1]),
            "mean": nres / n,
        },
        alpha.extra_class: extra,
        "noncanonical_total": int(sum(extra.values())),
        "lowercase_residues": int(counts[ord("a"):ord("z") + 1].sum()),
    }
    if on_invalid == "skip":
        # the corpus index runs over the kept records only; rejected.tsv names the others
        meta["on_invalid"] = "skip"
        meta["rejected"] = nrejected
    if alpha.name == "rna":
        meta["t_read_as_u"] = int(counts[ord("T")] + counts[ord("t")])
    if alpha.stop is not None:
        meta["stripped_stops"] = stops
    return meta


def build_info(seconds: float, input_bytes: int, n: int, **extra) -> dict:
    return {
        "seconds": round(seconds, 4),
        "input_bytes": input_bytes,
        "records_per_s": round(n / seconds, 1) if seconds > 0 else None,
        "input_mb_per_s": round(input_bytes / 1e6 / seconds, 2) if seconds > 0 else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }
