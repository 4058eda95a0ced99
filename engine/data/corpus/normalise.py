"""Validation and normalisation of one batch of raw records through the molecule's alphabet:
one ``bytes.translate`` flags the few non-canonical bytes, one numpy gather normalises the batch
(lowercase, T -> U), whitespace is dropped, one trailing stop stripped. A bad record (empty,
a character outside the alphabet, an interior stop) is a :class:`RecordProblem` naming its
position in the batch; :func:`clean_batch` finds every one and drops them (--on-invalid skip)."""
from __future__ import annotations

import numpy as np

from bioprune.engine.data.alphabets import Alphabet
from bioprune.engine.data.read_fasta import range_indices
from bioprune.engine.data.readers import RawBatch


class RecordProblem(Exception):
    """A bad record: ``j`` its 0-based position in the batch, ``problem`` what is wrong,
    ``hint`` what to do about it."""

    def __init__(self, j: int, problem: str, hint: str | None = None):
        super().__init__(problem)
        self.j, self.problem, self.hint = j, problem, hint


def _char(b: int) -> str:
    c = chr(b)
    return repr(c) if c.isprintable() else f"byte 0x{b:02x}"


_TABLES: dict[str, tuple[bytes, bytes]] = {}


def _tables(alpha: Alphabet) -> tuple[bytes, bytes]:
    """(normalisation table, 'special' table) as bytes for bytes.translate: special maps every
    raw byte that is not a canonical uppercase residue to 1 (0 otherwise)."""
    t = _TABLES.get(alpha.name)
    if t is None:
        special = np.ones(256, dtype=np.uint8)
        special[np.frombuffer(alpha.canonical.encode(), dtype=np.uint8)] = 0
        t = _TABLES[alpha.name] = (alpha.lut.tobytes(), special.tobytes())
    return t


def _drop_whitespace(data: np.ndarray, offs: np.ndarray, ws: np.ndarray):
    n = len(offs) - 1
    keep = ~ws[data]
    idt = np.int32 if n < 2**31 else np.int64
    rec = np.repeat(np.arange(n, dtype=idt), np.diff(offs))
    new = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rec[keep], minlength=n), out=new[1:])
    return data[keep], new


def normalise_batch(batch: RawBatch, alpha: Alphabet):
    """Validate and normalise one batch, vectorised. Returns (residues, offsets, raw_counts,
    stops), raw_counts counting the raw bytes that are not canonical uppercase residues.
    Raises RecordProblem(j, ...) for the first bad record (j is 0-based in the batch).

    Fast path: one ``bytes.translate`` flags the non-canonical bytes (usually none or few);
    only those are looked at individually."""
    n = len(batch)
    data, offs = batch.data, batch.offsets
    if batch.nulls is not None and batch.nulls.any():
        j = int(np.argmax(batch.nulls))
        raise RecordProblem(j, "empty record (missing value in the sequence column)",
                             "fill in or remove the row")
    lut_b, special_b = _tables(alpha)
    raw = data.tobytes()
    special = np.frombuffer(raw.translate(special_b), dtype=np.uint8)
    idx = np.flatnonzero(special) if special.any() else None
    raw_counts = np.zeros(256, dtype=np.int64)
    stops = 0
    out = data
    problems: list[RecordProblem] = []
    if idx is not None:
        raw_counts = (np.bincount(data[idx], minlength=256) if idx.size < len(data) // 8
                      else np.bincount(data, minlength=256))
        raw_counts[np.frombuffer(alpha.canonical.encode(), dtype=np.uint8)] = 0
        if raw_counts[alpha.whitespace].any():
            # whitespace is ignored (CRLF files, stray spaces): drop it and start again
            data, offs = _drop_whitespace(data, offs, alpha.whitespace)
            return normalise_batch(RawBatch(data, offs), alpha)
        lut = alpha.lut
        if raw_counts[lut == 0].any():
            bad = int(idx[np.argmax(lut[data[idx]] == 0)])
            j = int(np.searchsorted(offs, bad, side="right") - 1)
            problems.append(RecordProblem(
                j,
                f"invalid character {_char(int(data[bad]))} at position {bad - offs[j] + 1} "
                f"(allowed for {alpha.name}: {alpha.allowed_text()})",
                "fix or remove the record, or check --molecule",
            ))
        present = np.flatnonzero(raw_counts)
        if (lut[present] != present).any():  # lowercase, T -> U
            out = np.frombuffer(raw.translate(lut_b), dtype=np.uint8)
        if alpha.stop is not None and raw_counts[ord(alpha.stop)]:
            s = ord(alpha.stop)
            star = idx[data[idx] == s]
            ends = offs[1:] - 1
            lengths0 = np.diff(offs)
            # a stop is stripped iff it is the last residue of its record
            rec = np.searchsorted(offs, star, side="right") - 1
            trailing = (star == ends[rec]) & (lengths0[rec] > 0)
            if not trailing.all():
                k = int(np.argmax(~trailing))
                j = int(rec[k])
                problems.append(RecordProblem(
                    j,
                    f"'{alpha.stop}' (stop) at position {int(star[k] - offs[j]) + 1} is not the "
                    "last residue (only one trailing stop is allowed)",
                    "split or fix the record",
                ))
            star, rec = star[trailing], rec[trailing]
            keep = np.ones(len(out), dtype=bool)
            keep[star] = False
            out = out[keep]
            dec = np.zeros(n + 1, dtype=np.int64)
            dec[rec + 1] = 1
            offs = offs - np.cumsum(dec)
            stops = int(star.size)
            raw_counts[s] = 0
    lengths = np.diff(offs)
    if not lengths.all():
        j = int(np.argmin(lengths))
        problems.append(RecordProblem(j, "empty record (no sequence)",
                                       "remove it or add its sequence"))
    if problems:  # report the first bad record in file order
        raise min(problems, key=lambda p: p.j)
    return out, offs, raw_counts, stops



def _one(batch: RawBatch, j: int) -> RawBatch:
    a, b = int(batch.offsets[j]), int(batch.offsets[j + 1])
    nulls = None if batch.nulls is None else batch.nulls[j:j + 1]
    return RawBatch(batch.data[a:b], np.array([0, b - a], dtype=np.int64), nulls=nulls)


def _all_problems(batch: RawBatch, alpha: Alphabet) -> list[RecordProblem]:
    """Every bad record of a batch that :func:`_normalise` rejected, in record order. Candidates
    are found vectorised (null, empty, a byte outside the alphabet, an interior stop); only they
    are checked one by one."""
    n = len(batch)
    cand = np.zeros(n, dtype=bool)
    if batch.nulls is not None:
        cand |= batch.nulls
    data, offs = _drop_whitespace(batch.data, batch.offsets, alpha.whitespace)
    cand |= np.diff(offs) == 0
    bad = np.flatnonzero(alpha.lut[data] == 0)
    cand[np.searchsorted(offs, bad, side="right") - 1] = True
    if alpha.stop is not None:
        star = np.flatnonzero(data == ord(alpha.stop))
        rec = np.searchsorted(offs, star, side="right") - 1
        cand[rec[star != offs[rec + 1] - 1]] = True
    problems = []
    for j in np.flatnonzero(cand):
        try:
            normalise_batch(_one(batch, int(j)), alpha)
        except RecordProblem as p:
            problems.append(RecordProblem(int(j), p.problem, p.hint))
    return problems



def _take(batch: RawBatch, keep: np.ndarray, ids: np.ndarray, id_offs: np.ndarray):
    """(the records ``keep`` of ``batch`` as a RawBatch, their ids, id offsets)."""
    lens = np.diff(batch.offsets)[keep]
    data = batch.data[range_indices(batch.offsets[:-1][keep], lens)]
    offs = np.zeros(len(keep) + 1, dtype=np.int64)
    np.cumsum(lens, out=offs[1:])
    ilens = np.diff(id_offs)[keep]
    new_ids = ids[range_indices(id_offs[:-1][keep], ilens)]
    ioffs = np.zeros(len(keep) + 1, dtype=np.int64)
    np.cumsum(ilens, out=ioffs[1:])
    nulls = None if batch.nulls is None else batch.nulls[keep]
    return RawBatch(data, offs, nulls=nulls), new_ids, ioffs



def clean_batch(batch: RawBatch, alpha: Alphabet, ids: np.ndarray, id_offs: np.ndarray):
    """Validate and normalise a batch, dropping its bad records. Returns (residues, offsets,
    raw_counts, stops, ids, id_offsets, problems, keep): problems as (j, id, reason, hint) with j
    0-based in the batch given, in record order; keep the indices of the kept records, or None
    when all are kept; residues is None when none is."""
    try:
        return (*normalise_batch(batch, alpha), ids, id_offs, [], None)
    except RecordProblem as p:
        problems = _all_problems(batch, alpha) or [p]
    listed = [(q.j, batch.record_id(q.j) or "", q.problem, q.hint) for q in problems]
    keep = np.setdiff1d(np.arange(len(batch)), [q.j for q in problems])
    batch, ids, id_offs = _take(batch, keep, ids, id_offs)
    if len(batch) == 0:
        return None, None, None, 0, ids, id_offs, listed, keep
    return (*normalise_batch(batch, alpha), ids, id_offs, listed, keep)

