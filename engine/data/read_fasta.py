"""FASTA input (plain or gzip, multi-line records; id = first word of the header), parsed a chunk
at a time with numpy (no per-record Python objects), the next chunk read ahead in a thread."""
from __future__ import annotations

import gzip
import queue
import threading
import zlib
from typing import Iterator

import numpy as np

from bioprune.engine.data.readers import (HEADER_START, IS_WHITESPACE, NEWLINE, CorpusError,
                                          InputSpec, RawBatch, check_not_gzip, unreadable)



_BOM = b"\xef\xbb\xbf"


class _ReadAhead:
    """Reads the next chunk(s) of a file in a background thread (decompression and disk reads
    release the GIL), so reading overlaps with parsing. Bounded: at most ``depth`` chunks wait."""

    def __init__(self, f, chunk_bytes: int, depth: int = 2):
        self._f, self._size = f, chunk_bytes
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, name="bioprune-readahead", daemon=True)

    def __enter__(self):
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            try:
                item = self._f.read(self._size)
            except BaseException as e:  # noqa: BLE001 - handed to the consumer
                item = e
            while not self._stop.is_set():
                try:
                    self._q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if not isinstance(item, bytes) or not item:
                return

    def next(self) -> bytes:
        item = self._q.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        return False


def fasta_batches(spec: InputSpec, chunk_bytes: int, start: int = 0,
                  end: int | None = None) -> Iterator[RawBatch]:
    """The records of a FASTA file, or of its byte range [start, end): the records whose header
    '>' stands at a line start at a file offset in [start, end). Ranges cut anywhere (mid-record,
    mid-line) thus partition the records of a file, which lets ranks read one file in parallel;
    only the range at 0 sees a byte-order mark or junk before the first header (and reports it).
    ``records_read`` of a read error counts from the range's first record."""
    if not spec.compressed:
        check_not_gzip(spec)
    try:
        f = gzip.open(spec.path, "rb") if spec.compressed else open(spec.path, "rb")
        if start:
            f.seek(start - 1)   # the '\n' before a header at `start` makes it one
    except OSError as e:
        raise unreadable(spec, e) from e
    nrec = 0  # records yielded so far (for error messages)
    first = not start
    synced = not start      # buf starts at the file start or at one of the range's headers
    base = max(start - 1, 0)   # file offset of buf[0]
    buf = b""
    with f, _ReadAhead(f, chunk_bytes) as chunks:
        while True:
            try:
                chunk = chunks.next()
            except (OSError, EOFError, zlib.error) as e:
                raise unreadable(spec, e, records_read=nrec) from e
            eof = not chunk
            if first and not buf and chunk.startswith(_BOM):
                chunk = chunk[len(_BOM):]     # a UTF-8 byte-order mark (Windows editors)
                base += len(_BOM)
            buf += chunk
            if not synced:      # skip to the first header at or after `start`
                k = buf.find(b"\n>")
                if k < 0 or (end is not None and base + k + 1 >= end):
                    if k >= 0 or eof or (end is not None and base + len(buf) >= end):
                        return  # no header starts in the range
                    base, buf = base + len(buf) - 1, buf[-1:]
                    continue
                base, buf, synced = base + k + 1, buf[k + 1:], True
            stop = eof
            if end is not None:     # the first header at or after `end` closes the range
                k = buf.find(b"\n>", max(0, end - 1 - base))
                if k >= 0:
                    buf, stop = buf[:k + 1], True
            if stop:
                block, buf = buf, b""
            else:
                cut = buf.rfind(b"\n>")
                if cut < 0:
                    continue  # one record longer than the chunk: read on
                block, buf = buf[:cut + 1], buf[cut + 1:]
                base += cut + 1
            if block:
                batch = _parse_fasta_block(spec, block, first)
                first = False
                if batch is not None:
                    nrec += len(batch)
                    yield batch
            if stop:
                return


def range_indices(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated index ranges [starts[k], starts[k] + lengths[k]) as one int64 array."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    cum = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=cum[1:])
    return np.repeat(starts - cum, lengths) + np.arange(total, dtype=np.int64)


def _parse_fasta_block(spec: InputSpec, block: bytes, first: bool) -> RawBatch | None:
    """Parse whole FASTA records (the block starts at a '>' line, except possibly the file's
    first block which may start with blank lines) into a RawBatch, vectorised with numpy."""
    if not block.endswith(b"\n"):
        block += b"\n"
    a = np.frombuffer(block, dtype=np.uint8)
    nl = np.flatnonzero(a == NEWLINE)
    line_start = np.empty(len(nl), dtype=np.int64)
    line_start[0] = 0
    line_start[1:] = nl[:-1] + 1
    is_hdr = a[line_start] == HEADER_START
    hs = line_start[is_hdr]  # header line starts ('>')
    he = nl[is_hdr]  # header line ends ('\n')
    n = len(hs)
    pre_end = int(hs[0]) if n else len(a)
    if pre_end > 0:
        pre = a[:pre_end]
        junk = np.flatnonzero(~IS_WHITESPACE[pre])
        if junk.size:
            line = int(np.count_nonzero(pre[: junk[0]] == NEWLINE)) + 1
            raise CorpusError(
                f"malformed FASTA: sequence data before the first '>' header (line {line})"
                if first else "malformed FASTA: data outside a record",
                path=spec.display,
                hint="every record must start with a '>' header line; is this really FASTA?",
            )
    if n == 0:
        return None
    # header text: from after '>' to before '\n'
    hlen = he - hs - 1
    hidx = range_indices(hs + 1, hlen)
    hb = a[hidx]
    # sequence bytes: everything but newlines, header text and the '>' of each header
    seq_mask = a != NEWLINE
    seq_mask[hs] = False
    seq_mask[hidx] = False
    seq_mask[:pre_end] = False
    data = a[seq_mask]
    # sequence bytes per record: bytes between header end and next header start, minus newlines
    nxt = np.empty(n, dtype=np.int64)
    nxt[:-1] = hs[1:]
    nxt[-1] = len(a)
    n_nl = np.searchsorted(nl, nxt) - np.searchsorted(nl, he)
    seq_len = (nxt - he) - n_nl
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(seq_len, out=offsets[1:])
    # id = first word of the header text
    hoff = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(hlen, out=hoff[1:])
    ws = np.flatnonzero(IS_WHITESPACE[hb])
    k = np.searchsorted(ws, hoff[:-1])
    first_ws = hoff[1:].copy()
    ok = k < len(ws)
    first_ws[ok] = np.minimum(ws[k[ok]], hoff[1:][ok])
    id_len = first_ws - hoff[:-1]
    ids = hb[range_indices(hoff[:-1], id_len)]
    id_offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(id_len, out=id_offsets[1:])
    return RawBatch(data, offsets, ids, id_offsets)
