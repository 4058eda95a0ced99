"""The inputs cut into units, and each rank's contiguous run of them.

A *unit* is a whole input, a byte range of a plain FASTA file (the records whose '>' header
starts in the range, see ``read_fasta.fasta_batches``), or a run of row groups of a Parquet
file. Gzip FASTA, CSV/TSV (plain or gzip) and Hugging Face datasets stay whole: gzip cannot be
entered mid-stream, a CSV row boundary cannot be found without parsing from the start (quoted
newlines), and datasets are rarely the large inputs. Units are in corpus order and each rank
owns a contiguous run of them, so "rank order, then unit order, then record order" is the
corpus order of DESIGN.md.
On one rank with ``units_per_rank`` 1 every input is one unit: the build is then one streaming
pass over the inputs in order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bioprune.engine.data.readers import InputSpec

#: files smaller than twice this stay one unit (a range costs a seek and a partial chunk)
MIN_UNIT_BYTES = 32 << 20


@dataclass(frozen=True)
class Unit:
    """One piece of one input. ``record_base``: records of the file before this unit, or None
    when unknown before the exchange (a FASTA byte range after the first)."""

    index: int
    file: int
    owner: int
    byte_range: tuple[int, int | None] | None = None
    row_groups: tuple[int, int] | None = None
    record_base: int | None = 0



def _parquet_groups(spec: InputSpec) -> tuple[np.ndarray, np.ndarray] | None:
    """(rows, on-disk bytes) per row group, or None if the footer cannot be read (the scan will
    then report the file as a whole unit does)."""
    try:
        import pyarrow.parquet as pq

        md = pq.ParquetFile(str(spec.path)).metadata
        rows = np.array([md.row_group(i).num_rows for i in range(md.num_row_groups)], np.int64)
        size = np.array([sum(md.row_group(i).column(c).total_compressed_size
                             for c in range(md.num_columns)) for i in range(md.num_row_groups)],
                        np.int64)
        return rows, size
    except Exception:  # noqa: BLE001 - planning only
        return None


def plan_units(specs: list[InputSpec], sizes: list[int], world: int, *,
               units_per_rank: int = 1, min_unit_bytes: int = MIN_UNIT_BYTES) -> list[Unit]:
    """Cut the inputs into units and give each rank a contiguous run of them.

    The inputs are laid end to end as one byte stream of S bytes, cut into ``world *
    units_per_rank`` equal shares; a plain FASTA or multi-row-group Parquet file of at least
    2 × ``min_unit_bytes`` is cut where a share boundary falls inside it (a Parquet file at the
    nearest row-group boundary), pieces smaller than ``min_unit_bytes`` merged into their
    neighbour; every other input is one unit. A unit belongs to the rank whose share holds its
    middle byte, so the ranks get about S / world bytes each whatever the mix of file sizes."""
    total = sum(sizes)
    shares = world * max(1, units_per_rank)
    units: list[Unit] = []

    def owner(mid: float) -> int:
        return min(world - 1, int(mid * world // total)) if total else 0

    def add(k, g, a, b, **kw):
        units.append(Unit(len(units), k, owner(g + (a + b) / 2), **kw))

    g = 0
    for k, (spec, size) in enumerate(zip(specs, sizes)):
        near = range(g * shares // total, (g + size) * shares // total + 2) if total else ()
        inner = [c for c in (total * j / shares - g for j in near if 0 < j < shares)
                 if 0 < c < size]      # share boundaries inside this input
        splittable = (spec.format == "fasta" and not spec.compressed) or spec.format == "parquet"
        groups = _parquet_groups(spec) if splittable and spec.format == "parquet" and inner \
            and size >= 2 * min_unit_bytes else None
        if not inner or size < 2 * min_unit_bytes or not splittable or (
                spec.format == "parquet" and (groups is None or len(groups[0]) < 2)):
            add(k, g, 0, size)
            g += size
            continue
        cuts = [0]
        for c in inner:
            if c - cuts[-1] >= min_unit_bytes and size - c >= min_unit_bytes:
                cuts.append(int(c))
        cuts.append(size)
        if len(cuts) == 2:
            add(k, g, 0, size)
        elif spec.format == "fasta":
            for a, b in zip(cuts[:-1], cuts[1:]):
                add(k, g, a, b, byte_range=(a, None if b == size else b),
                    record_base=0 if a == 0 else None)
        else:
            rows, rg_bytes = groups
            edge = np.concatenate([[0], np.cumsum(rg_bytes)]) * (size / max(1, rg_bytes.sum()))
            at = sorted({int(np.argmin(np.abs(edge - c))) for c in cuts[1:-1]} - {0, len(rows)})
            bounds = [0, *at, len(rows)]
            row_base = np.concatenate([[0], np.cumsum(rows)])
            if len(bounds) == 2:        # every cut fell on the file's ends
                add(k, g, 0, size)
            else:
                for a, b in zip(bounds[:-1], bounds[1:]):
                    add(k, g, edge[a], edge[b], row_groups=(a, b), record_base=int(row_base[a]))
        g += size
    return units
