"""The directory every run exports: ``model.safetensors`` + ``config.json`` (or a Hugging Face
``save_pretrained`` directory for that family), loadable without DeepSpeed by
:func:`load_saved_model`."""
from __future__ import annotations

import json
from pathlib import Path

from bioprune.engine.models.checkpoint import load_weights, state_on_rank0
from bioprune.engine.models.hf import load_hf_dir, save_hf
from bioprune.engine.models.registry import build_model


def save_model(bundle, directory: str | Path) -> Path | None:
    """Write ``model.safetensors`` + ``config.json``: loadable with ``load_saved_model``, no
    DeepSpeed. Under ZeRO-3 every rank must call it (the weights are gathered to rank 0, which
    writes); otherwise any one rank may."""
    state = state_on_rank0(bundle.module)
    return save_state(state, bundle.config, directory, bundle) if state is not None else None


def save_state(state: dict, config: dict, directory: str | Path, bundle=None) -> Path:
    """Plain state dict + config; a Hugging Face family is written by ``save_pretrained``
    (:func:`bioprune.engine.models.hf.save_hf`) so that ``from_pretrained`` loads it too."""
    from safetensors.torch import save_file

    from bioprune.engine.io.atomic import atomic_path, write_json

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if bundle is not None and bundle.tokenizer is not None:
        save_hf(bundle, state, directory)
        return directory
    # tied tensors (RNA-FM's embedding and LM projection) are stored under both names, and
    # safetensors refuses names that share memory: copy those, and only those (a second copy of
    # every tensor would double rank 0's memory while it writes a 600M-parameter model)
    seen: set = set()
    copied = {}
    for k, v in state.items():
        ptr = v.untyped_storage().data_ptr()
        copied[k] = v.clone() if ptr in seen or not v.is_contiguous() else v
        seen.add(ptr)
    state = copied
    with atomic_path(directory / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    write_json(directory / "config.json", config)
    return directory


def saved_model_kind(config: dict) -> tuple[str | None, str | None]:
    """(model, size) of a saved model's config.json: ours write ``model`` / ``size``; a Hugging
    Face directory written by ``save_state`` keeps them as ``bioprune_model`` / ``bioprune_size``
    beside the transformers config."""
    if "bioprune_model" in config:
        return config["bioprune_model"], config.get("bioprune_size")
    return config.get("model"), config.get("size")


def load_saved_model(directory: str | Path):
    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text())
    if "bioprune_model" in config:   # a Hugging Face directory written by save_state
        return load_hf_dir(directory, config)
    bundle = build_model(config["model"], config["size"])
    load_weights(bundle.module, str(directory / "model.safetensors"))
    return bundle
