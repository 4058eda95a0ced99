"""The Slurm examples call real flags: every ``--flag`` an example passes to ``launch/X.py`` is one
that X.py's parser knows (a renamed flag would otherwise fail only on the cluster)."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.sbatch"))


def _calls(text: str):
    """(script name, flags) of each ``python launch/X.py ...`` command (with continuations)."""
    joined = re.sub(r"\\\n", " ", text)
    for line in joined.splitlines():
        m = re.search(r"launch/(\w+)\.py(.*)", line)
        if m:
            yield m.group(1), re.findall(r"(?<!\S)(--[\w-]+)", m.group(2).split("#")[0])


def _known_flags(script: str) -> set[str]:
    spec = importlib.util.spec_from_file_location(f"example_{script}",
                                                  ROOT / "launch" / f"{script}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    flags = set()
    import argparse

    original = argparse.ArgumentParser.parse_args

    def capture(parser, args=None, namespace=None):
        for action in parser._actions:
            flags.update(o for o in action.option_strings if o.startswith("--"))
        raise SystemExit(0)

    argparse.ArgumentParser.parse_args = capture
    try:
        with pytest.raises(SystemExit):
            mod.parse_args([])
    finally:
        argparse.ArgumentParser.parse_args = original
    return flags


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_example_flags_exist(example):
    calls = list(_calls(example.read_text()))
    assert calls, f"{example.name} runs no launch/*.py"
    for script, flags in calls:
        unknown = set(flags) - _known_flags(script)
        assert not unknown, f"{example.name}: launch/{script}.py has no {sorted(unknown)}"


def test_the_check_catches_a_renamed_flag():
    assert "--no-such-flag" not in _known_flags("pretrain")
    assert "--save-steps" in _known_flags("pretrain")
