"""Start-up checks of the ``--data`` / ``--model`` flags (:class:`ModelInputs`), before the model
or the corpus is built: model size known, checkpoint a readable weights file, every input
present and of a known format, the cache path usable, and the input's molecule the model's
(RNA given to ESM-C is refused unless ``--molecule`` says otherwise)."""
from __future__ import annotations

import zipfile
from pathlib import Path

from bioprune.engine.runtime import validate as v
from bioprune.engine.runtime.errors import fail


def check_checkpoint(path) -> None:
    """A readable weights file: a .safetensors with a valid header, or a torch.save file (zip or
    legacy pickle). The contents are matched against the architecture when loaded."""
    p = v.readable_file("checkpoint", path, "weights file")
    if p is None:
        return
    if p.stat().st_size == 0:
        fail(f"--checkpoint {path}: empty file")
    if p.name.endswith(".safetensors"):
        try:
            from safetensors import safe_open

            with safe_open(str(p), framework="pt") as f:
                f.keys()
        except Exception as e:  # noqa: BLE001 - safetensors raises its own types
            fail(f"--checkpoint {path}: not a readable .safetensors weights file ({e})")
        return
    with open(p, "rb") as f:
        head = f.read(2)
    if not (zipfile.is_zipfile(p) or head[:1] == b"\x80"):
        fail(f"--checkpoint {path}: not a weights file (expected a .safetensors file or a "
             "PyTorch state dict saved with torch.save, e.g. RNA-FM_pretrained.pth)")


def check_model_inputs(inputs) -> None:
    from bioprune.engine.data.readers import resolve_input
    from bioprune.engine.models import MODEL_NAMES, SIZES
    from bioprune.engine.models.bundle import MOLECULE

    if inputs.model == "hf":
        model_molecule = _hf_molecule(inputs.model_size)
    elif inputs.model not in SIZES:
        fail(f"--model {inputs.model}: unknown; choose one of {', '.join(MODEL_NAMES)}")
    elif inputs.model_size not in SIZES[inputs.model]:
        fail(f"--model-size {inputs.model_size}: unknown for --model {inputs.model}; choose one "
             f"of {', '.join(SIZES[inputs.model])}")
    check_checkpoint(inputs.checkpoint)
    if not inputs.data:
        fail("--data: no inputs given")
    for d in inputs.data:
        resolve_input(d)                     # missing file, unknown format: CorpusError
    if inputs.corpus_cache is not None:
        c = Path(inputs.corpus_cache).expanduser()
        if c.exists() and not c.is_dir():
            fail(f"--corpus-cache {inputs.corpus_cache}: is a file, not a directory")
    check_molecule(inputs, model_molecule if inputs.model == "hf" else MOLECULE[inputs.model])


def _hf_molecule(path: str) -> str:
    """The molecule of a local Hugging Face model directory, from its tokenizer's vocabulary."""
    from bioprune.engine.models.hf import molecule_of_vocab

    d = Path(path)
    if not (d / "config.json").is_file():
        fail(f"--hf-path {path}: no config.json there (a directory written by save_pretrained "
             "is expected)")
    try:
        from transformers import AutoTokenizer

        vocab = AutoTokenizer.from_pretrained(str(d), local_files_only=True).get_vocab()
        return molecule_of_vocab(vocab)
    except Exception as e:  # noqa: BLE001 - transformers raises many types
        fail(f"--hf-path {path}: cannot read its tokenizer ({e})")


def check_molecule(inputs, model_molecule: str) -> None:
    from bioprune.engine.data.molecule import sniff

    given = getattr(inputs, "molecule", None)
    if given is not None:
        if given != model_molecule:
            fail(f"--molecule {given} does not match --model {inputs.model}, which reads "
                 f"{model_molecule}; pick the model for your data "
                 f"({'esmc' if given == 'protein' else 'rnafm'} reads {given})")
        return    # the user says what the input is: no guessing
    for d in inputs.data:
        guess = sniff(d, inputs.column, inputs.id_column)
        if guess is None or guess["molecule"] == model_molecule:
            continue
        if guess["molecule"] == "rna":
            fail(f"--data {d} looks like RNA/DNA ({guess['nucleotide_share']:.0%} of the letters "
                 f"of its first {guess['records']} records are A C G T U N) but --model "
                 f"{inputs.model} reads protein (U would be read as selenocysteine); use --model "
                 "rnafm, or pass --molecule protein if these really are proteins")
        fail(f"--data {d} looks like protein ({guess['protein_only_share']:.0%} of the letters "
             f"of its first {guess['records']} records are E F I L P Q ... which no nucleotide "
             f"code uses) but --model {inputs.model} reads RNA; use --model esmc, or pass "
             "--molecule rna to read it as RNA anyway")
