"""The architecture holds: stage subpackages import only earlier stages, no sys.path tricks, the
standard library's ``select`` is never shadowed, and a plain (non-editable) install finds its
DeepSpeed configs and installs the entry-point commands."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "engine"
# the order of engine/__init__.py's diagram: a package may import itself and those before it
STAGES = ["runtime", "io", "data", "models", "training", "influence", "selection", "evaluation",
          "experiments"]
# selection stands beside the model stages: it reads scores, never models or gradients
NOT_ALLOWED = {"selection": {"models", "training", "influence"}}


def _engine_imports(path: Path) -> set[str]:
    """The engine subpackages a module imports (absolute ``bioprune.engine.X`` imports)."""
    found = set()
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and getattr(block.test, "id", None) == "TYPE_CHECKING"
                   for n in ast.walk(block)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[:2] == ["bioprune", "engine"] and len(parts) > 2:
                found.add(parts[2])
    return found


@pytest.mark.parametrize("stage", [s for s in STAGES if (ENGINE / s).is_dir()])
def test_stage_imports_only_earlier_stages(stage):
    allowed = set(STAGES[:STAGES.index(stage) + 1]) - NOT_ALLOWED.get(stage, set())
    bad = {}
    for path in sorted((ENGINE / stage).rglob("*.py")):
        wrong = {p for p in _engine_imports(path) if p in STAGES and p not in allowed}
        if wrong:
            bad[str(path.relative_to(ROOT))] = sorted(wrong)
    assert not bad, f"{stage} imports later stages: {bad}"


def test_every_stage_has_a_docstring():
    for stage in STAGES:
        init = ENGINE / stage / "__init__.py"
        if init.exists():
            assert ast.get_docstring(ast.parse(init.read_text())), f"{init} has no docstring"


def test_no_sys_path_manipulation():
    offenders = []
    for folder in ("engine", "kernels", "launch", "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.resolve() == Path(__file__).resolve():
                continue
            text = path.read_text()
            if "sys.path.insert" in text or "sys.path.append" in text or "sys.path[" in text \
                    or "sys.path.pop" in text:
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders


@pytest.mark.parametrize("where", [ROOT, ROOT / "launch"])
def test_standard_library_select_is_not_shadowed(where):
    p = subprocess.run([sys.executable, "-c", "import select; print(select.__file__)"],
                       cwd=where, capture_output=True, text=True, check=True)
    assert "launch" not in p.stdout and p.stdout.strip().endswith(".so") or "lib-dynload" in p.stdout


def test_plain_install_finds_ds_configs_and_commands(tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(ROOT)],
                   check=True, capture_output=True, text=True)
    for cmd in ("bioprune-score", "bioprune-select", "bioprune-pretrain", "bioprune-demo"):
        assert (target / "bin" / cmd).exists(), cmd
    env = dict(os.environ, PYTHONPATH=str(target))
    code = ("from bioprune.engine.runtime.zero3 import default_ds_config; import bioprune.launch.score;"
            "print(default_ds_config(3))")
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                       text=True, check=True)
    assert Path(p.stdout.strip()).is_file()
    assert str(target) in p.stdout, p.stdout   # the installed copy, not the checkout
    p = subprocess.run([sys.executable, str(target / "bin" / "bioprune-select"), "--help"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert "--strategy" in p.stdout
