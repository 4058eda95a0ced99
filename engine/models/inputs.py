"""What the ``--data`` / ``--model`` flags name, and loading both: the model (seeded, so a fresh
model initialises the same on every rank and every run) and the validated corpus."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bioprune.engine.runtime.errors import fail


@dataclass
class ModelInputs:
    data: list[str] = field(default_factory=list)
    model: str = "rnafm"
    model_size: str = "tiny"
    checkpoint: str | None = None
    column: str = "sequence"
    id_column: str | None = None
    corpus_cache: str | None = None
    max_length: int | None = None


def load_model_and_corpus(inputs: ModelInputs, seed: int, out: Path):
    """Returns (bundle, corpus, cache dir, residues kept per sequence)."""
    import torch

    from bioprune.engine.data.corpus import CorpusError, load_corpus
    from bioprune.engine.models import build_model

    torch.manual_seed(seed)
    bundle = build_model(inputs.model, inputs.model_size, inputs.checkpoint)
    cache = Path(inputs.corpus_cache).expanduser().absolute() if inputs.corpus_cache else out / "corpus"
    try:
        corpus = load_corpus(inputs.data, bundle.molecule, cache, column=inputs.column,
                             id_column=inputs.id_column)
    except CorpusError as e:
        fail(str(e))
    max_res = min(inputs.max_length or bundle.max_residues, bundle.max_residues)
    return bundle, corpus, cache, max_res
