"""Table inputs: CSV/TSV (plain or gzip, through pyarrow's streaming CSV reader), Parquet (row
groups) and Hugging Face datasets saved with ``save_to_disk``; the sequence and id columns come
out as RawBatch arrays without per-record Python objects."""
from __future__ import annotations


import numpy as np

from bioprune.engine.data.readers import (SPLIT_SEP, CorpusError, InputSpec, RawBatch,
                                          check_not_gzip, unreadable)



def _arrow_strings(arr) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(data uint8, offsets int64 from 0, nulls bool | None) of an Arrow string/binary array,
    zero-copy where possible."""
    import pyarrow as pa

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    t = arr.type
    if pa.types.is_string(t) or pa.types.is_binary(t):
        odt = np.int32
    elif pa.types.is_large_string(t) or pa.types.is_large_binary(t):
        odt = np.int64
    else:
        arr = arr.cast(pa.large_string())
        odt = np.int64
    n = len(arr)
    if n == 0:
        return np.zeros(0, np.uint8), np.zeros(1, np.int64), None
    bufs = arr.buffers()
    offs = np.frombuffer(bufs[1], dtype=odt)[arr.offset: arr.offset + n + 1].astype(np.int64)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    data = data[offs[0]:offs[-1]]
    offs -= offs[0]
    nulls = None
    if arr.null_count:
        nulls = np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    return data, offs, nulls


def _is_stringlike(t) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        return _is_stringlike(t.value_type)
    return (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
            or pa.types.is_large_binary(t) or str(t) in ("string_view", "binary_view"))


def _pick_columns(spec: InputSpec, names: list[str], column: str, id_column: str | None):
    if column not in names:
        raise CorpusError(
            f"column {column!r} not found; available columns: {', '.join(map(str, names))}",
            path=spec.display, hint="pass --column NAME",
        )
    if id_column is not None:
        if id_column not in names:
            raise CorpusError(
                f"id column {id_column!r} not found; "
                f"available columns: {', '.join(map(str, names))}",
                path=spec.display, hint="pass --id-column NAME, or leave it out",
            )
        idc = id_column
    else:
        idc = "id" if ("id" in names and column != "id") else None
    return idc


def _table_batch(spec: InputSpec, table, column: str, idc: str | None) -> RawBatch:
    seq = table.column(column)
    data, offs, nulls = _arrow_strings(seq)
    ids = id_offs = None
    if idc is not None:
        ids, id_offs, _ = _arrow_strings(table.column(idc))  # null ids -> empty -> generated
    return RawBatch(data, offs, ids, id_offs, nulls)


def csv_batches(spec: InputSpec, column: str, id_column: str | None, block_size: int):
    import pyarrow as pa
    import pyarrow.csv as pcsv

    if not spec.compressed:
        check_not_gzip(spec)
    delim = "\t" if spec.format == "tsv" else ","
    parse = pcsv.ParseOptions(delimiter=delim)
    read = pcsv.ReadOptions(block_size=max(1 << 16, min(block_size, 1 << 30)))

    def stream():
        return pa.input_stream(str(spec.path), compression="gzip" if spec.compressed else None)

    def open_reader(convert):
        try:
            return pcsv.open_csv(stream(), read_options=read, parse_options=parse,
                                 convert_options=convert)
        except Exception as e:  # arrow raises several types
            if "empty csv" in str(e).lower():
                raise CorpusError("empty input file (no header, no records)", path=spec.display,
                                  hint="remove it from the inputs") from e
            raise unreadable(spec, e) from e

    # first pass over the header only: the column names (cheap: one block)
    r0 = open_reader(pcsv.ConvertOptions(column_types={}))
    names = r0.schema.names
    r0 = None
    idc = _pick_columns(spec, names, column, id_column)
    cols = [column] + ([idc] if idc else [])
    convert = pcsv.ConvertOptions(
        include_columns=cols,
        column_types={c: pa.large_string() for c in cols},
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    reader = open_reader(convert)
    nrec = 0
    while True:
        try:
            rb = reader.read_next_batch()
        except StopIteration:
            return
        except Exception as e:
            if isinstance(e, CorpusError):
                raise
            raise unreadable(spec, e, records_read=nrec) from e
        if rb.num_rows == 0:
            continue
        nrec += rb.num_rows
        yield _table_batch(spec, rb, column, idc)


def parquet_batches(spec: InputSpec, column: str, id_column: str | None, batch_rows: int,
                    row_groups: tuple[int, int] | None = None):
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(str(spec.path))
        schema = pf.schema_arrow
    except Exception as e:
        raise unreadable(spec, e) from e
    idc = _pick_columns(spec, schema.names, column, id_column)
    t = schema.field(column).type
    if not _is_stringlike(t):
        raise CorpusError(f"column {column!r} has type {t}, expected strings", path=spec.display,
                          hint="pass --column NAME of the sequence column")
    cols = [column] + ([idc] if idc else [])
    nrec = 0
    groups = None if row_groups is None else list(range(*row_groups))
    it = pf.iter_batches(batch_size=batch_rows, columns=cols, row_groups=groups)
    while True:
        try:
            rb = next(it)
        except StopIteration:
            return
        except Exception as e:
            raise unreadable(spec, e, records_read=nrec) from e
        if rb.num_rows == 0:
            continue
        nrec += rb.num_rows
        yield _table_batch(spec, rb, column, idc)


def _load_hf(spec: InputSpec):
    import datasets

    try:
        obj = datasets.load_from_disk(str(spec.path))
    except Exception as e:
        raise CorpusError(
            f"not a Hugging Face dataset directory ({type(e).__name__}: {e})", path=spec.display,
            hint="pass a directory written by datasets' save_to_disk (DIR, or DIR::SPLIT for a "
                 "DatasetDict), or a FASTA/CSV/TSV/Parquet file",
        ) from e
    if isinstance(obj, datasets.DatasetDict):
        splits = list(obj.keys())
        if spec.split is None:
            raise CorpusError(
                f"is a DatasetDict with splits: {', '.join(splits)}", path=spec.display,
                hint=f"name one split as DIR{SPLIT_SEP}SPLIT, "
                     f"e.g. {spec.path}{SPLIT_SEP}{splits[0] if splits else 'train'}",
            )
        if spec.split not in obj:
            raise CorpusError(
                f"split {spec.split!r} not found; available splits: {', '.join(splits)}",
                path=spec.path, hint=f"use DIR{SPLIT_SEP}SPLIT with one of those",
            )
        return obj[spec.split]
    if spec.split is not None:
        raise CorpusError(
            f"'{SPLIT_SEP}{spec.split}' given but the directory holds a single Dataset (no splits)",
            path=spec.path, hint=f"drop '{SPLIT_SEP}{spec.split}'",
        )
    return obj


def hf_batches(spec: InputSpec, column: str, id_column: str | None, batch_rows: int):
    ds = _load_hf(spec)
    names = list(ds.column_names)
    idc = _pick_columns(spec, names, column, id_column)
    t = ds.data.schema.field(column).type
    if not _is_stringlike(t):
        raise CorpusError(f"column {column!r} has type {t}, expected strings", path=spec.display,
                          hint="pass --column NAME of the sequence column")
    cols = [column] + ([idc] if idc else [])
    ds = ds.select_columns(cols).with_format("arrow")
    n = len(ds)
    for i in range(0, n, batch_rows):
        try:
            table = ds[i:min(n, i + batch_rows)]
        except Exception as e:
            raise unreadable(spec, e, records_read=i) from e
        yield _table_batch(spec, table, column, idc)
