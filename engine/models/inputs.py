"""What the ``--data`` / ``--model`` flags name, and loading both: the model (seeded, so a fresh
model initialises the same on every rank and every run) and the validated corpus."""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

from bioprune.engine.runtime.errors import fail
from bioprune.engine.runtime.flags import Flag, at_least, setting
from bioprune.engine.runtime.run_flags import OVERWRITE, RUN_GROUP


CORPUS_GROUP = "corpus"
MODEL_GROUP = "model"


def model_name(value: str) -> str:
    """--model: a family, or hf:DIR (a local Hugging Face directory)."""
    import argparse

    from bioprune.engine.models.registry import MODEL_NAMES

    if value in MODEL_NAMES or value.startswith("hf:"):
        return value
    raise argparse.ArgumentTypeError(f"unknown model {value!r}; choose one of "
                                     f"{', '.join(MODEL_NAMES)} (hf:DIR for a local directory)")


def _sizes() -> str:
    from bioprune.engine.models.registry import SIZES

    return "; ".join(f"{m}: {', '.join(s)}" for m, s in SIZES.items())


def _model_choices() -> str:
    from bioprune.engine.models.registry import MODEL_NAMES

    return "{" + ",".join(MODEL_NAMES) + "}"


MODEL_SIZE = Flag(group=MODEL_GROUP, help=f"architecture size ({_sizes()})")


# The field order is the order of a run identity's keys (run_config.json): identity fields keep
# their places, run-only ones sit where they read best in --help.
@dataclass
class ModelInputs:
    data: list[str] = setting(default_factory=list, identity=True, flag=Flag(
        nargs="+", required=True, metavar="PATH", group=CORPUS_GROUP,
        help="input files, concatenated in this order into one corpus: FASTA "
             "(.fasta/.fa/.fna/.faa, optionally .gz), CSV/TSV (optionally .gz), Parquet, or a "
             "Hugging Face dataset saved to disk (DIR, or DIR::SPLIT)"))
    column: str = setting("sequence", identity=True, flag=Flag(
        group=CORPUS_GROUP, help="the sequence column of CSV/TSV/Parquet/datasets inputs"))
    id_column: str | None = setting(None, identity=True, flag=Flag(
        group=CORPUS_GROUP,
        help="the record-id column of table inputs (default: 'id' if present)"))
    corpus_cache: str | None = setting(None, identity=False, flag=Flag(
        metavar="DIR", group=CORPUS_GROUP,
        help="where the memory-mapped corpus is built (default: OUT/corpus); reused when the "
             "inputs are unchanged"))
    # node-local cache dir (every node builds a copy)
    corpus_cache_local: str | None = setting(None, identity=False, flag=Flag(
        metavar="DIR", group=CORPUS_GROUP,
        help="instead of --corpus-cache, for clusters without a fast shared filesystem: a "
             "directory on each node's own disk (the same path on every node); all ranks build "
             "the corpus together and every node gets a complete copy there (the nodes exchange "
             "their shares over the process group). The inputs must be readable at their paths "
             "from every node"))
    model: str = setting("rnafm", identity=True, flag=Flag(
        type=model_name, metavar=_model_choices(), group=MODEL_GROUP,
        help="rnafm: fm.BioBertModel (RNA); esmc: esm.models.esmc.ESMC (protein); esm2: Hugging "
             "Face EsmForMaskedLM with the published ESM-2 architectures (protein); hf: any "
             "local AutoModelForMaskedLM directory (give --hf-path DIR, or write --model hf:DIR)"))
    model_size: str = setting("tiny", identity=True, flag=MODEL_SIZE)
    checkpoint: str | None = setting(None, identity=True, flag=Flag(
        metavar="FILE", group=MODEL_GROUP,
        help="local weights: a state dict (.safetensors/.pt) or the released "
             "RNA-FM_pretrained.pth; nothing is ever downloaded"))
    max_length: int | None = setting(None, identity=True, check=at_least(1, "{flag} must be >= 1"),
                                     flag=Flag(
        type=int, group=CORPUS_GROUP,
        help="longest sequence in residues (default: the model's, 1022 for rnafm, 2046 for "
             "esmc); longer ones are cropped to a window fixed by (seed, corpus index) and "
             "counted in the manifest"))
    # start --out afresh instead of refusing another run's outputs
    overwrite: bool = setting(False, identity=False, flag=OVERWRITE)
    # what the input holds; None = guess from the first records. Both are in every identity
    # (run_identity.identity adds them), so here they are run-only
    molecule: str | None = setting(None, identity=False, flag=Flag(
        choices=("rna", "protein"), group=RUN_GROUP,
        help="what --data holds; default: guessed from the first records and refused when it "
             "is not what --model reads (RNA given to esmc)"))
    # bad records: "error" lists them, "skip" drops + counts them
    on_invalid: str = setting("error", identity=False, flag=Flag(
        choices=("error", "skip"), group=RUN_GROUP,
        help="records with characters outside the alphabet, or empty: 'error' lists the first "
             "20 (file, record, id, what) and stops; 'skip' drops them, lists them in "
             "OUT/rejected.tsv and counts them in the manifest (the corpus index then runs over "
             "the kept records)"))


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
