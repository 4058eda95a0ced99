"""What the ``--data`` / ``--model`` flags name, and loading both: the model (seeded, so a fresh
model initialises the same on every rank and every run) and the validated corpus."""
from __future__ import annotations

import pickle
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
    corpus_cache_local: str | None = None   # node-local cache dir (every node builds a copy)
    max_length: int | None = None
    molecule: str | None = None      # what the input holds; None = guess from the first records
    on_invalid: str = "error"        # bad records: "error" lists them, "skip" drops + counts them
    overwrite: bool = False          # start --out afresh instead of refusing another run's outputs
    # where training curves go (training.trackers); here so that every run's settings carry it,
    # like overwrite, and never in a run identity: it changes no result, a resume may change it
    report_to: str = "tensorboard"


def load_model_and_corpus(inputs: ModelInputs, seed: int, out: Path,
                          zero_config: dict | None = None):
    """Returns (bundle, corpus, cache dir, residues kept per sequence). With a ZeRO-3
    ``zero_config`` the model is built partitioned (``runtime.zero3.building``)."""
    import torch

    from bioprune.engine.data.corpus import CorpusError, load_corpus
    from bioprune.engine.models import build_model
    from bioprune.engine.runtime.zero3 import building

    torch.manual_seed(seed)
    try:
        with building(zero_config):
            bundle = build_model(inputs.model, inputs.model_size, inputs.checkpoint)
    except (ValueError, OSError, RuntimeError, KeyError, pickle.UnpicklingError) as e:
        fail(f"--checkpoint {inputs.checkpoint}: cannot load it into --model {inputs.model} "
             f"--model-size {inputs.model_size} ({e})" if inputs.checkpoint else str(e))
    cache = Path(inputs.corpus_cache_local or inputs.corpus_cache or out / "corpus")
    cache = cache.expanduser().absolute()
    try:
        corpus = load_corpus(inputs.data, bundle.molecule, cache, column=inputs.column,
                             id_column=inputs.id_column, on_invalid=inputs.on_invalid,
                             node_local=inputs.corpus_cache_local is not None)
    except CorpusError as e:
        fail(str(e))
    _copy_rejected(cache, out)
    max_res = min(inputs.max_length or bundle.max_residues, bundle.max_residues)
    return bundle, corpus, cache, max_res


def _copy_rejected(cache: Path, out: Path) -> None:
    """With --on-invalid skip: the corpus's rejected.tsv (file, record, id, reason) also in OUT."""
    from bioprune.engine.runtime import distributed

    src = cache / "rejected.tsv"
    if distributed.is_main() and src.exists() and Path(out) != cache:
        from bioprune.engine.io.atomic import write_bytes

        write_bytes(Path(out) / "rejected.tsv", src.read_bytes())
