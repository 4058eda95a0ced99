"""Where the shared sample data lives (the demo, the tests and the downstream tasks read it)."""
from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """``$BIOPRUNE_DATA`` if set; else ``../shared/data`` beside the source checkout (an editable
    install), else beside the current directory (a plain install run from the checkout)."""
    env = os.environ.get("BIOPRUNE_DATA")
    if env:
        return Path(env).expanduser().resolve()
    beside_source = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    beside_cwd = Path.cwd().resolve().parent / "shared" / "data"
    for candidate in (beside_source, beside_cwd):
        if candidate.is_dir():
            return candidate
    return beside_source
