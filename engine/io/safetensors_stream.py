"""Writing a safetensors file one tensor at a time.

``safetensors.torch.save_file`` needs every tensor in memory at once; under ZeRO-3 the Fisher of
a 600M-parameter model is gathered to rank 0 one parameter at a time and must be written that
way. The format (https://github.com/huggingface/safetensors, "Format") is an 8-byte little-endian
header length, a JSON header giving each tensor's dtype, shape and byte range, then the raw
little-endian bytes; files written here are read back by ``safetensors`` itself (tested).
"""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import torch

from bioprune.engine.io.atomic import atomic_path

_DTYPES = {torch.float32: ("F32", 4)}


def write_streamed(path: str | Path, entries: list[tuple[str, tuple]], tensors,
                   metadata: dict | None = None, dtype=torch.float32) -> None:
    """Write ``tensors`` (an iterable giving, in the order of ``entries`` = [(name, shape)],
    each tensor as a CPU tensor of that shape) to ``path``, atomically."""
    code, size = _DTYPES[dtype]
    header, offset = {}, 0
    for name, shape in entries:
        nbytes = math.prod(shape) * size
        header[name] = {"dtype": code, "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)          # the data starts 8-byte aligned
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for (name, shape), t in zip(entries, tensors, strict=True):
            if tuple(t.shape) != tuple(shape) or t.dtype != dtype:
                raise ValueError(f"{name}: got {tuple(t.shape)} {t.dtype}, "
                                 f"declared {shape} {dtype}")
            f.write(t.contiguous().numpy().tobytes())
