"""The scores directory of a run (DESIGN.md, "Run directory").

```
<run>/scores/part-XXXXXX.parquet   columns: index int64, score float64, length int32, loss float32
                                   and, for joins by the user: id string (the record id),
                                   in_subset bool (in D_sub), source dictionary<string> (the
                                   input file's name)
<run>/scores/_SUCCESS              written last; holds the number of rows
```

The scoring pass splits the corpus into fixed chunks of corpus indices and writes one part per
chunk, ``part-{chunk:06d}.parquet``. A part appears only complete (temporary name, then rename), so
an interrupted run resumes from :func:`finished_chunks`. Each corpus index appears exactly once
across the parts; :func:`check_scores` verifies that (and finite scores) collectively over the
process group, exactly, without gathering the scores anywhere.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from bioprune.engine.io.atomic import atomic_path, write_text
from bioprune.engine.runtime.errors import UsageError

SUCCESS = "_SUCCESS"
COLUMNS = ("index", "score", "length", "loss")      # what every part holds, and the engine reads
EXTRA = ("id", "in_subset", "source")                # for users' joins (pandas, datasets, seqkit)
DTYPES = {
    "index": np.dtype(np.int64),
    "score": np.dtype(np.float64),
    "length": np.dtype(np.int32),
    "loss": np.dtype(np.float32),
}
_PART_RE = re.compile(r"^part-(\d{6,})\.parquet$")


class ScoresError(ValueError, UsageError):
    """Bad or unfinished scores directory, or scores that break the format's guarantees."""


# ----------------------------------------------------------------------------- layout

def part_path(scores_dir, chunk_id: int) -> Path:
    """Path of the part holding chunk ``chunk_id``: ``part-{chunk:06d}.parquet``."""
    if int(chunk_id) < 0:
        raise ValueError(f"chunk id must be >= 0, got {chunk_id}")
    return Path(scores_dir) / f"part-{int(chunk_id):06d}.parquet"


def _schema():
    import pyarrow as pa

    return pa.schema([
        ("index", pa.int64()),
        ("score", pa.float64()),
        ("length", pa.int32()),
        ("loss", pa.float32()),
    ])


def write_part(scores_dir, chunk_id: int, index, score, length, loss, *, ids=None,
               in_subset=None, source=None, source_names=None) -> Path:
    """Write one part atomically (temporary name, then rename); columns cast to the exact dtypes.

    Arrays may be NumPy arrays, sequences or (CPU or CUDA) torch tensors. Empty parts are allowed.
    ``ids`` (record ids), ``in_subset`` (bools) and ``source`` (positions in ``source_names``,
    stored dictionary-encoded: one copy of each file name per part) add the :data:`EXTRA`
    columns.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {}
    for name, values in zip(COLUMNS, (index, score, length, loss)):
        arr = _to_numpy(values)
        if arr.ndim != 1:
            arr = arr.reshape(-1)
        if name in ("index", "length") and arr.dtype.kind == "f":
            if arr.size and not np.array_equal(arr, np.round(arr)):
                raise ValueError(f"column {name!r} must hold integers")
        cols[name] = arr.astype(DTYPES[name], copy=False)
    sizes = {len(v) for v in cols.values()}
    if len(sizes) != 1:
        lengths = {k: len(v) for k, v in cols.items()}
        raise ValueError(f"columns have different lengths: {lengths}")
    table = pa.table({k: pa.array(v) for k, v in cols.items()}, schema=_schema())
    if ids is not None:
        table = table.append_column("id", pa.array(list(ids), type=pa.string()))
    if in_subset is not None:
        table = table.append_column("in_subset", pa.array(np.asarray(in_subset, dtype=bool)))
    if source is not None:
        table = table.append_column("source", pa.DictionaryArray.from_arrays(
            pa.array(np.asarray(source, dtype=np.int32)), pa.array(list(source_names))))
    path = part_path(scores_dir, chunk_id)
    with atomic_path(path) as tmp:
        # Scores and losses are incompressible floats: plain encoding, no compression; the
        # indices (ascending runs) and lengths delta-packed. ~5x faster to read than the defaults.
        pq.write_table(table, tmp, use_dictionary=False, compression="none",
                       column_encoding={"index": "DELTA_BINARY_PACKED",
                                        "length": "DELTA_BINARY_PACKED"})
    return path


def _to_numpy(values) -> np.ndarray:
    if hasattr(values, "detach") and hasattr(values, "cpu"):  # torch tensor
        return values.detach().cpu().numpy()
    return np.asarray(values)


def list_parts(scores_dir) -> list[Path]:
    """Complete parts, sorted by chunk id (temporary files are ignored)."""
    d = Path(scores_dir)
    if not d.is_dir():
        return []
    found = []
    for name in os.listdir(d):
        m = _PART_RE.match(name)
        if m:
            found.append((int(m.group(1)), d / name))
    found.sort()
    return [p for _, p in found]


def finished_chunks(scores_dir) -> set[int]:
    """Chunk ids whose part is present (complete)."""
    out = set()
    d = Path(scores_dir)
    if not d.is_dir():
        return out
    for name in os.listdir(d):
        m = _PART_RE.match(name)
        if m:
            out.add(int(m.group(1)))
    return out


def part_problem(path, first: int, stop: int) -> str | None:
    """Why the part at ``path`` cannot be trusted as chunk [first, stop) of the corpus, or None.
    Reads only the Parquet footer: readable, the four columns, ``stop - first`` rows, and the
    index column's statistics inside [first, stop). A crash of the machine (not the process:
    parts are renamed into place whole) can leave a truncated part."""
    import pyarrow.parquet as pq

    try:
        meta = pq.read_metadata(path)
    except Exception as e:  # noqa: BLE001 - ArrowInvalid, OSError: all mean "damaged"
        return f"unreadable ({type(e).__name__}: {str(e)[:120]})"
    names = list(meta.schema.names)
    if names[:len(COLUMNS)] != list(COLUMNS) or not set(names) <= set(COLUMNS + EXTRA):
        return f"columns {names}, expected {list(COLUMNS)} (+ {list(EXTRA)})"
    if meta.num_rows != stop - first:
        return f"{meta.num_rows} rows, expected {stop - first}"
    col = names.index("index")
    for g in range(meta.num_row_groups):
        st = meta.row_group(g).column(col).statistics
        if st is not None and st.has_min_max and not (first <= st.min and st.max < stop):
            return f"indices {st.min}..{st.max} outside {first}..{stop - 1}"
    return None


def write_success(scores_dir, n_rows: int) -> Path:
    """Mark the scores directory finished; written last, holds the number of rows."""
    path = Path(scores_dir) / SUCCESS
    write_text(path, f"{int(n_rows)}\n")
    return path


def read_success(scores_dir) -> int:
    """Number of rows recorded in ``_SUCCESS``; :class:`ScoresError` if scoring did not finish."""
    path = Path(scores_dir) / SUCCESS
    if not path.is_file():
        raise ScoresError(
            f"scoring did not finish: no _SUCCESS in {scores_dir}; "
            "rerun launch/score.py with the same --out to resume")
    text = path.read_text().strip()
    try:
        n = int(text.split()[0]) if text else -1
    except ValueError:
        n = -1
    if n < 0:
        raise ScoresError(f"{path} is malformed: expected the number of rows, found {text[:80]!r}")
    return n


# ----------------------------------------------------------------------------- reading

def part_rows(path) -> int:
    """Number of rows of one part (reads only the footer)."""
    import pyarrow.parquet as pq

    return int(pq.read_metadata(path).num_rows)


def read_scores(scores_dir, parts: Sequence | None = None,
                columns: Iterable[str] = ("index", "score")) -> dict[str, np.ndarray]:
    """Concatenate ``columns`` of ``parts`` (default: all parts, in chunk order) into NumPy arrays.

    Arrays are preallocated from the footers' row counts, so peak memory is the result plus one
    part. Dtypes are the format's (index int64, score float64, length int32, loss float32).
    """
    import pyarrow.parquet as pq

    columns = tuple(columns)
    for c in columns:
        if c not in DTYPES:
            raise ValueError(f"unknown column {c!r}; the format has {COLUMNS}")
    if parts is None:
        parts = list_parts(scores_dir)
    parts = [Path(p) if Path(p).is_absolute() or Path(p).exists() else Path(scores_dir) / p
             for p in parts]
    rows = [part_rows(p) for p in parts]
    total = int(sum(rows))
    out = {c: np.empty(total, dtype=DTYPES[c]) for c in columns}
    pos = 0
    for p, r in zip(parts, rows):
        if r == 0:
            continue
        try:
            table = pq.read_table(p, columns=list(columns))
        except Exception as e:  # report which file is broken
            raise ScoresError(f"cannot read {p}: {e}") from e
        if table.num_rows != r:
            raise ScoresError(f"{p}: footer says {r} rows, read {table.num_rows}")
        for c in columns:
            col = table.column(c).to_numpy()
            out[c][pos:pos + r] = col
        pos += r
    return out


def shard_parts(parts: Sequence, rank: int, world: int, sizes: Sequence[int] | None = None) -> list:
    """This rank's disjoint share of ``parts`` (deterministic; the shares cover every part once).

    Without ``sizes``: round-robin over the sorted order (part i goes to rank i mod world). With
    ``sizes`` (rows per part): contiguous runs of parts balanced by rows — rank r takes the parts
    whose cumulative row midpoint falls in [r/world, (r+1)/world) of the total.
    """
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"bad rank/world: {rank}/{world}")
    parts = list(parts)
    if sizes is None:
        return parts[rank::world]
    sizes = np.asarray(sizes, dtype=np.int64)
    if len(sizes) != len(parts):
        raise ValueError("sizes must give one row count per part")
    total = int(sizes.sum())
    if total == 0:
        return parts[rank::world]
    # midpoint of each part in units of rows*world, integer arithmetic (no float rounding)
    mid2 = 2 * np.cumsum(sizes) - sizes            # = 2 * (start + size/2)
    owner = np.minimum((mid2 * world) // (2 * total), world - 1)
    return [p for p, o in zip(parts, owner) if int(o) == rank]


# ----------------------------------------------------------------------------- validation

def check_scores(index, score, n: int | None = None, comm=None, limit: int = 10) -> int:
    """Collective check of the rows held by all ranks; returns n. Raises :class:`ScoresError`
    on every rank together if any score is NaN/inf or the indices are not exactly a permutation
    of 0..n-1 (n = ``n`` if given, e.g. the ``_SUCCESS`` count, else the total number of rows).

    Exact: every rank owns a contiguous range of 0..n-1 and receives (all-to-all) the indices
    that fall in it, marking them in a presence array; with the all-reduced row count, every
    index present and n rows <=> a permutation. O(share) work and memory per rank.
    """
    from bioprune.engine.runtime.collectives import Comm
    from bioprune.engine.runtime.index_check import check_permutation, nonfinite_error

    comm = comm or Comm()
    index = np.asarray(index, dtype=np.int64)
    score = np.asarray(score, dtype=np.float64)
    msg = nonfinite_error(comm, index, score, limit)
    if msg:
        raise ScoresError(msg)
    total = comm.sum_int(index.size)
    if n is None:
        n = total
    check_permutation(comm, index, int(n), total=total, limit=limit, error=ScoresError)
    return int(n)


def finished_parts(scores_dir) -> tuple[int, list[Path]]:
    """(n, part files) of a finished, non-empty scores directory, or :class:`ScoresError`."""
    d = Path(scores_dir)
    if not d.is_dir():
        raise ScoresError(f"scores directory {scores_dir} does not exist")
    n = read_success(d)
    parts = list_parts(d)
    if n > 0 and not parts:
        raise ScoresError(f"{scores_dir} has a _SUCCESS for {n} rows but no part files")
    if n == 0:
        raise ScoresError(f"{scores_dir} is empty: _SUCCESS says 0 rows")
    return n, parts


def read_share(scores_dir, comm=None, columns: Iterable[str] = ("index", "score")):
    """Collective: this rank's disjoint share of the rows of a finished scores directory.

    Returns (columns dict, n) where n is the ``_SUCCESS`` row count. The parts are split into
    contiguous runs balanced by rows (footer counts, read by all ranks in turn and all-reduced);
    every rank reads only its own parts. Errors (no _SUCCESS, no parts, unreadable part, row
    counts that do not add up to n) are raised on every rank together.
    """
    from bioprune.engine.runtime.collectives import Comm, raise_together

    comm = comm or Comm()
    err = n = None
    parts: list[Path] = []
    try:
        n, parts = finished_parts(scores_dir)
    except ScoresError as e:
        err = str(e)
    raise_together(comm, err, ScoresError)
    sizes = np.zeros(len(parts), dtype=np.int64)
    try:
        for i in range(comm.rank, len(parts), comm.world):
            sizes[i] = part_rows(parts[i])
    except Exception as e:  # noqa: BLE001
        err = f"cannot read the footer of {parts[i]}: {e}"
    raise_together(comm, err, ScoresError)
    sizes = comm.allreduce(sizes)
    total = int(sizes.sum())
    if total != n:
        raise ScoresError(f"the parts in {scores_dir} hold {total} rows but _SUCCESS says {n}")
    mine = shard_parts(parts, comm.rank, comm.world, sizes=sizes)
    data = None
    try:
        data = read_scores(scores_dir, mine, columns=columns)
    except Exception as e:  # noqa: BLE001
        err = str(e) if isinstance(e, ScoresError) else f"cannot read scores: {e}"
    raise_together(comm, err, ScoresError)
    return data, int(n)
