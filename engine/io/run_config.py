"""``RUN/run_config.json``: the settings that change a run's results. A rerun into the same
directory must match them (it resumes), else it is refused with the differences listed."""
from __future__ import annotations

import json
from pathlib import Path

from bioprune.engine.io.atomic import write_json
from bioprune.engine.runtime.errors import fail

FILE = "run_config.json"


def jsonable(v):
    return [str(x) for x in v] if isinstance(v, (list, tuple)) else v


def result_config(settings, keys) -> dict:
    return {k: jsonable(getattr(settings, k)) for k in keys}


def check_same_run(out: Path, config: dict) -> None:
    """Refuse (UsageError) when ``out`` holds a run made with other result-relevant settings."""
    path = Path(out) / FILE
    if not path.exists():
        return
    old = json.loads(path.read_text())
    diff = [f"{k}: {old.get(k)!r} then, {v!r} now" for k, v in config.items() if old.get(k) != v]
    if diff:
        fail(f"{out} holds a run made with other settings ({'; '.join(diff)}); "
             "use a new --out, or delete it to start over")


def write_run_config(out: Path, config: dict) -> None:
    write_json(Path(out) / FILE, config)
