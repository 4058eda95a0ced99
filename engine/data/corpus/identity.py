"""Whether a corpus cache may be reused: the identity of its inputs (paths, sizes, mtimes,
molecule, columns) as recorded in ``corpus.json`` against the inputs given now."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from bioprune.engine.data.alphabets import get_alphabet
from bioprune.engine.data.corpus.layout import META
from bioprune.engine.data.readers import CorpusError, InputSpec, resolve_input


def as_paths(paths) -> list:
    """The inputs as a list (one path alone is a list of one); none at all is an error."""
    if isinstance(paths, (str, os.PathLike)):
        return [paths]
    paths = list(paths)
    if not paths:
        raise CorpusError("no corpus inputs given",
                          hint="pass one or more FASTA/CSV/TSV/Parquet/dataset paths")
    return paths


def input_identity(specs: Sequence[InputSpec], molecule: str, column: str, id_column,
                   on_invalid: str = "error") -> dict:
    """What decides whether a cache matches a request (``on_invalid`` only when it is "skip",
    so caches built before the option existed still match)."""
    extra = {"on_invalid": on_invalid} if on_invalid != "error" else {}
    return {**extra,
        "molecule": molecule,
        "column": column,
        "id_column": id_column,
        "inputs": [
            {"path": str(s.path), "split": s.split, "format": s.format, **s.fingerprint()}
            for s in specs
        ],
    }


def identity_of_meta(meta: dict) -> dict:
    """The identity a cache's corpus.json records (comparable to :func:`input_identity`)."""
    extra = {"on_invalid": meta["on_invalid"]} if meta.get("on_invalid", "error") != "error" else {}
    return {**extra,
        "molecule": meta.get("molecule"),
        "column": meta.get("column"),
        "id_column": meta.get("id_column"),
        "inputs": [
            {k: f.get(k) for k in ("path", "split", "format", "size", "mtime_ns", "files")
             if k in f}
            for f in meta.get("inputs", [])
        ],
    }


def describe_mismatch(have: dict, want: dict) -> str:
    """The first difference of two identities, in words (for the error that refuses a cache)."""
    for key in ("molecule", "column", "id_column", "on_invalid"):
        if have.get(key) != want.get(key):
            return f"{key} was {have.get(key)!r}, now {want.get(key)!r}"
    hi, wi = have.get("inputs", []), want.get("inputs", [])
    if [f["path"] for f in hi] != [f["path"] for f in wi] or [f.get("split") for f in hi] != [
        f.get("split") for f in wi
    ]:
        return (f"inputs were [{', '.join(f['path'] for f in hi)}], "
                f"now [{', '.join(f['path'] for f in wi)}]")
    for a, b in zip(hi, wi):
        if a != b:
            what = [k for k in ("size", "mtime_ns", "files", "format") if a.get(k) != b.get(k)]
            return f"{b['path']} changed since the corpus was built ({', '.join(what)})"
    return "unknown difference"


def read_meta(cache_dir: Path) -> dict | None:
    try:
        return json.loads((Path(cache_dir) / META).read_text())
    except (OSError, ValueError):
        return None


def check_matches(meta, paths, molecule, cache_dir, column, id_column, on_invalid="error"):
    """A CorpusError unless the corpus.json ``meta`` was built from these inputs."""
    specs = [resolve_input(p) for p in as_paths(paths)]
    want = input_identity(specs, get_alphabet(molecule).name, column, id_column, on_invalid)
    have = identity_of_meta(meta)
    if have != want:
        raise CorpusError(
            "corpus cache was built from different inputs: " + describe_mismatch(have, want),
            path=cache_dir,
            hint="pick another cache dir or delete this one (a stale corpus is never reused)",
        )


def cached(paths, molecule, cache_dir: Path, column, id_column, on_invalid="error") -> bool:
    """True when ``cache_dir`` holds a corpus of these inputs; False when there is none yet (no
    directory, or an empty one); a CorpusError when it holds another corpus, an unreadable one,
    or something else."""
    meta_path = Path(cache_dir) / META
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as e:
            raise CorpusError(f"unreadable corpus.json ({e})", path=cache_dir,
                              hint="delete the cache dir and build again") from None
        check_matches(meta, paths, molecule, cache_dir, column, id_column, on_invalid)
        return True
    if cache_dir.exists() and cache_dir.is_dir() and any(cache_dir.iterdir()):
        raise CorpusError("cache dir is not empty and holds no corpus", path=cache_dir,
                          hint="pick another cache dir or delete this one")
    return False
