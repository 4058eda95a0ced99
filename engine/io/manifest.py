"""``manifest.json``: what a run was (config, versions, seed, world size), what it counted and how
long each phase took. Rewritten atomically after every phase, so an interrupted run has one too."""
from __future__ import annotations

import json
import platform
import socket
import sys
import time
from importlib import metadata
from pathlib import Path

from bioprune.engine.io.atomic import write_json

PACKAGES = ("bioprune", "torch", "deepspeed", "rna-fm", "esm", "triton", "numpy", "pyarrow",
            "safetensors", "transformers", "datasets", "accelerate", "scikit-learn", "scipy",
            "torchmetrics")


def versions() -> dict:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


class Manifest:
    def __init__(self, path: Path, command: str, config: dict, world_size: int):
        self.path = Path(path)
        old = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.data = {
            "command": command,
            "argv": sys.argv,
            "config": config,
            "world_size": world_size,
            "host": socket.gethostname(),
            "versions": versions(),
            "started": old.get("started", time.strftime("%Y-%m-%dT%H:%M:%S%z")),
            "runs": old.get("runs", 0) + 1,   # > 1 means the run was resumed
            "status": "running",
            "counts": old.get("counts", {}),
            "timings_s": old.get("timings_s", {}),
            "throughput": old.get("throughput", {}),
        }
        for k, v in old.items():
            self.data.setdefault(k, v)

    def set(self, key: str, value) -> None:
        self.data[key] = value

    def count(self, **kv) -> None:
        self.data["counts"].update(kv)

    def timing(self, phase: str, seconds: float, items: int | None = None,
               unit: str = "seq") -> None:
        self.data["timings_s"][phase] = round(seconds, 3)
        if items:
            self.data["throughput"][phase] = f"{items / max(seconds, 1e-9):.1f} {unit}/s"

    def save(self, status: str | None = None) -> None:
        if status:
            self.data["status"] = status
            if status == "finished":
                self.data["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_json(self.path, self.data)
