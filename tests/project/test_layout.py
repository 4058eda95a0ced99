"""The architecture holds: stage subpackages import only earlier stages, no sys.path tricks, no
folder or module of the checkout can shadow the standard library or an installed distribution
(whichever of the repository root, ``launch/``, ``launch/bench/``, ``tests/`` or a stage folder
``tests/<stage>/`` is first on ``sys.path``), and a plain (non-editable) install finds its
DeepSpeed configs and installs the entry-point commands."""
import ast
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
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


def _module_graph() -> dict[str, set[str]]:
    """engine module → the engine modules it imports, at the top or inside a function (a cycle
    through a function-local import still ties the two modules together). ``from pkg import
    sub`` is an edge to the submodule ``sub`` only."""
    mods = {}
    for path in ENGINE.rglob("*.py"):
        name = ".".join(("bioprune", *path.relative_to(ROOT).with_suffix("").parts))
        mods[name.removesuffix(".__init__")] = path
    graph = {m: set() for m in mods}
    for m, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                subs = [f"{node.module}.{a.name}" for a in node.names
                        if f"{node.module}.{a.name}" in mods]
                names = subs if len(subs) == len(node.names) else [node.module, *subs]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            graph[m] |= {n for n in names if n in mods and n != m}
    return graph


def test_no_import_cycle():
    """No two engine modules import each other, directly or through others (the cycles that
    survived only by importing inside functions were broken up: shared pieces moved to a
    module both import)."""
    graph = _module_graph()
    cycles, state = [], {}

    def visit(m, path):
        state[m] = "open"
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                cycles.append(path[path.index(n):] + [n])
            elif n not in state:
                visit(n, path + [n])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles[:5])


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


# Folders Python puts first on sys.path: the repository root (`python -m pytest`, `python -c`),
# a launcher's or benchmark's own folder (`python launch/x.py`, `deepspeed launch/x.py`), tests/
# (pytest's rootdir-relative import of conftest.py and its helpers) and every stage folder below
# it (pytest's default "prepend" import mode puts a test file's own folder first; a worker such as
# tests/selection/test_selection_dist.py also runs as a script from there).
FIRST_ON_PATH = [ROOT, ROOT / "launch", ROOT / "launch" / "bench", TESTS]
SOURCE_FOLDERS = ["engine", "kernels", "launch", "ds_configs"]


def _and_below(where: Path) -> list[Path]:
    """``where``, and for tests/ every folder below it too (the stage folders)."""
    if where != TESTS:
        return [where]
    return sorted(p for p in [TESTS, *TESTS.rglob("*")] if p.is_dir() and p.name != "__pycache__")


def _shadowing_names(folder: Path) -> dict[str, str]:
    """What ``import NAME`` finds in ``folder`` before any later sys.path entry: modules and
    regular packages (a folder without ``__init__.py`` is a namespace portion, which an installed
    package or module of the same name found later on sys.path beats)."""
    found = {}
    for p in folder.iterdir():
        if p.is_file() and p.suffix in (".py", ".so", ".pyc"):
            found[p.name.split(".")[0]] = p.name
        elif p.is_dir() and (p / "__init__.py").exists():
            found[p.name] = f"{p.name}/__init__.py"
    return found


def _installed_import_names() -> set[str]:
    return set(importlib.metadata.packages_distributions()) | set(sys.stdlib_module_names)


def test_source_folders_are_namespace_portions():
    """By construction: the folders that install as bioprune.* can never hide a distribution.
    Nor can tests/ and its stage folders: none holds an ``__init__.py``, so pytest imports each
    test module by its bare name (``--import-mode=prepend``), and those names must be unique."""
    regular = [f for f in SOURCE_FOLDERS if (ROOT / f / "__init__.py").exists()]
    regular += [str(p.parent.relative_to(ROOT)) for f in SOURCE_FOLDERS
                for p in (ROOT / f).glob("*/__init__.py") if f != "engine"]
    regular += [str(f.relative_to(ROOT)) for f in _and_below(TESTS) if (f / "__init__.py").exists()]
    assert not regular, f"these folders would be regular packages on sys.path: {regular}"
    names = {}
    for f in _and_below(TESTS):
        for p in f.glob("*.py"):
            names.setdefault(p.stem, []).append(str(p.relative_to(ROOT)))
    same = {k: v for k, v in names.items() if len(v) > 1}
    assert not same, f"test modules of the same name: {same}"


@pytest.mark.parametrize("where", FIRST_ON_PATH, ids=lambda p: str(p.relative_to(ROOT)) or ".")
def test_nothing_shadows_an_installed_distribution_or_the_standard_library(where):
    installed = _installed_import_names()
    folders = _and_below(where)
    assert len(folders) > 1 or where != TESTS, "no stage folders found below tests/"
    for folder in folders:
        clashes = {name: what for name, what in _shadowing_names(folder).items()
                   if name in installed}
        assert not clashes, (f"{folder.relative_to(ROOT)}/ holds {clashes}, named like an "
                             "installed distribution or a standard-library module; rename it")


def test_the_shadowing_check_sees_a_clash(tmp_path):
    """The check above can fail: a module named like an installed distribution is caught."""
    (tmp_path / "numpy.py").write_text("")
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "__init__.py").write_text("")
    (tmp_path / "tqdm").mkdir()   # a namespace folder does not shadow
    names = _shadowing_names(tmp_path)
    assert set(names) & _installed_import_names() >= {"numpy"}
    assert "kernels" in names and "tqdm" not in names


@pytest.mark.parametrize("where", FIRST_ON_PATH, ids=lambda p: str(p.relative_to(ROOT)) or ".")
@pytest.mark.slow
@pytest.mark.subprocess
def test_installed_kernels_and_transformers_resolve_from_every_start_folder(where):
    """Hugging Face's `kernels` (imported by transformers) resolves to the installed package."""
    code = ("import importlib.util, sys\n"
            "spec = importlib.util.find_spec('kernels')\n"
            "if spec is not None:\n"
            "    import kernels\n"
            "    assert 'site-packages' in (kernels.__file__ or ''), kernels.__path__\n"
            "from transformers import EsmForMaskedLM\n"
            "import bioprune.kernels.ops, bioprune.launch.score\n"
            "print('ok')\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=where, capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr[-2000:]


@pytest.mark.parametrize("where", [ROOT, ROOT / "launch"])
@pytest.mark.subprocess
def test_standard_library_select_is_not_shadowed(where):
    p = subprocess.run([sys.executable, "-c", "import select; print(select.__file__)"],
                       cwd=where, capture_output=True, text=True, check=True)
    assert "launch" not in p.stdout and p.stdout.strip().endswith(".so") \
        or "lib-dynload" in p.stdout


@pytest.mark.slow
@pytest.mark.subprocess
def test_plain_install_finds_ds_configs_and_commands(tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(ROOT)],
                   check=True, capture_output=True, text=True)
    for cmd in ("bioprune-score", "bioprune-select", "bioprune-pretrain", "bioprune-demo"):
        assert (target / "bin" / cmd).exists(), cmd
    env = dict(os.environ, PYTHONPATH=str(target))
    code = ("from bioprune.engine.runtime.zero3 import default_ds_config; "
            "import bioprune.launch.score;"
            "print(default_ds_config(3))")
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                       text=True, check=True)
    assert Path(p.stdout.strip()).is_file()
    assert str(target) in p.stdout, p.stdout   # the installed copy, not the checkout
    p = subprocess.run([sys.executable, str(target / "bin" / "bioprune-select"), "--help"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert "--strategy" in p.stdout


SCRIPTS = sorted(p for d in (ROOT / "launch", ROOT / "launch" / "bench") for p in d.glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
@pytest.mark.subprocess
def test_every_launcher_and_benchmark_answers_help(script):
    """Run as a user runs it (its own folder first on sys.path), from the repository root."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, str(script), "--help"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "usage:" in p.stdout and "--help" in p.stdout, p.stdout[-500:]
