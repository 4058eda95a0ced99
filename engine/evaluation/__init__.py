"""Downstream evaluation of an encoder (DESIGN step 6): probes on frozen (or fine-tuned)
representations for RNA type, RNA secondary structure, CRISPR on-target efficiency, protein
secondary structure, protein localisation, held-out MLM loss/perplexity and user CSV tasks,
with random-label and random-encoder controls; writes ``eval.json`` + ``eval.md``.

Owns: task definitions and their data splits (``tasks``), embedding extraction (``embed``),
probe heads and their training through Hugging Face ``accelerate`` (``probes``), held-out MLM
loss and perplexity (``mlm``), the settings and task catalogue (``settings``), metrics and
dot-bracket parsing (``metrics``), the report (``report``) and the driver (``runner``).

May import ``runtime``, ``io``, ``data`` and ``models``; nothing imports it but
``launch/evaluate.py`` (and the experiment harness).
"""
from bioprune.engine.evaluation.settings import TASKS, EvalSettings  # noqa: F401


def evaluate(settings: "EvalSettings") -> dict:
    """Run the evaluation described by ``settings``; returns the eval.json document."""
    from bioprune.engine.evaluation.runner import run

    return run(settings)
