"""The build directory and its publication: a corpus is built in a temporary sibling of its cache
directory, then renamed onto it (atomic), so a failed or interrupted build leaves nothing that
looks like a corpus, and a reader never sees half of one."""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from bioprune.engine.data.corpus.identity import identity_of_meta, read_meta
from bioprune.engine.data.readers import CorpusError


def make_build_dir(cache_dir: Path) -> Path:
    """A new empty temporary directory beside ``cache_dir`` (its parents created)."""
    if cache_dir.exists() and not cache_dir.is_dir():
        raise CorpusError("corpus cache path exists and is not a directory", path=cache_dir,
                          hint="pick another cache dir")
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir.parent / f".{cache_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


def check_visible(tmp: Path, rank: int) -> None:
    """Every rank writes into the leader's build directory: one that does not see it says so."""
    if not tmp.is_dir():
        raise CorpusError(f"rank {rank} does not see the directory the corpus is being built in "
                          f"({tmp})", hint="every rank must see the corpus cache (a shared "
                          "filesystem); without one, give a directory on each node's own disk "
                          "(--corpus-cache-local)")


def publish(tmp: Path, cache_dir: Path, identity: dict, overwrite: bool = False) -> None:
    """Rename the finished build ``tmp`` onto ``cache_dir`` (atomic). A cache that appeared
    meanwhile is kept when it was built from the same inputs (another process, or another node
    sharing the directory, was faster), else it is an error."""
    if overwrite and cache_dir.exists():
        trash = cache_dir.parent / f".{cache_dir.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(cache_dir, trash)
        os.rename(tmp, cache_dir)
        shutil.rmtree(trash, ignore_errors=True)
        return
    try:
        os.rename(tmp, cache_dir)  # atomic; fails if a non-empty cache_dir appeared
    except OSError:
        meta = read_meta(cache_dir)
        if meta is None or identity_of_meta(meta) != identity:
            raise CorpusError("corpus cache dir was filled by another process while "
                              "building", path=cache_dir,
                              hint="pick another cache dir or delete it") from None
        shutil.rmtree(tmp, ignore_errors=True)
