"""One input → its records, whatever the format: the dispatch over the format readers
(:mod:`.read_fasta`, :mod:`.read_tables`), which build on the shared types of :mod:`.readers`."""
from __future__ import annotations

from typing import Iterator

from bioprune.engine.data.read_fasta import fasta_batches
from bioprune.engine.data.read_tables import csv_batches, hf_batches, parquet_batches
from bioprune.engine.data.readers import CorpusError, InputSpec, RawBatch


def iter_batches(spec: InputSpec, column: str = "sequence", id_column: str | None = None, *,
                 chunk_bytes: int = 8 << 20, batch_rows: int = 65536,
                 byte_range: tuple[int, int | None] | None = None,
                 row_groups: tuple[int, int] | None = None) -> Iterator[RawBatch]:
    """Yield the records of one input, in file order, as RawBatch objects; of a plain FASTA
    file only those of ``byte_range`` [start, end) (see ``fasta_batches``), of a Parquet file
    only the row groups [first, stop) of ``row_groups`` (the parallel build's units)."""
    if spec.format == "fasta":
        yield from fasta_batches(spec, chunk_bytes, *(byte_range or (0, None)))
    elif spec.format in ("csv", "tsv"):
        yield from csv_batches(spec, column, id_column, chunk_bytes)
    elif spec.format == "parquet":
        yield from parquet_batches(spec, column, id_column, batch_rows, row_groups)
    elif spec.format == "hf":
        yield from hf_batches(spec, column, id_column, batch_rows)
    else:  # pragma: no cover
        raise CorpusError(f"unknown format {spec.format!r}", path=spec.display)
