"""``RUN/run_config.json``: the settings that change a run's results, as JSON. Whether a rerun
matches them is decided by :mod:`bioprune.engine.io.run_identity`."""
from __future__ import annotations

from pathlib import Path

from bioprune.engine.io.atomic import write_json

FILE = "run_config.json"


def jsonable(v):
    return [str(x) for x in v] if isinstance(v, (list, tuple)) else v


def result_config(settings, keys) -> dict:
    return {k: jsonable(getattr(settings, k)) for k in keys}


def write_run_config(out: Path, config: dict) -> None:
    write_json(Path(out) / FILE, config)
