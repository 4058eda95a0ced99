"""bioprune: influence-based data pruning for biological foundation models, on DeepSpeed.

The source folders ``engine/`` and ``kernels/`` install as ``bioprune.engine`` and
``bioprune.kernels`` (PyPI already has unrelated top-level packages named ``kernels`` and
``launch``, so the import names live under one namespace).
"""
from setuptools import setup

setup(
    name="bioprune",
    version="0.1.0",
    description="Subset-based self-influence data pruning for RNA/protein foundation models",
    python_requires=">=3.10",
    packages=["bioprune", "bioprune.engine", "bioprune.kernels"],
    package_dir={
        "bioprune": "bioprune_pkg",
        "bioprune.engine": "engine",
        "bioprune.kernels": "kernels",
    },
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
    ],
    extras_require={"test": ["pytest"]},
)
