"""Model weights on disk: loading a plain state dict into a bundle's module, and the
``model.safetensors`` + ``config.json`` directory that every run exports (loadable without
DeepSpeed by :func:`load_saved_model`)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

def load_weights(module: nn.Module, path: str) -> None:
    """Load a plain state dict (.safetensors, or .pt/.pth of a state dict) into the MLM wrapper.

    Keys may be the wrapper's (``net.*``) or the bare network's; both are accepted.
    """
    path = str(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=False)
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        if isinstance(state, dict) and "module" in state and isinstance(state["module"], dict):
            state = state["module"]
    if not any(k.startswith("net.") for k in state):
        state = {f"net.{k}": v for k, v in state.items()}
    own = module.state_dict()
    missing = [k for k in own if k not in state and not _is_tied_alias(module, k)]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise ValueError(
            f"{path}: weights do not fit this architecture; missing {missing[:5]} "
            f"unexpected {unexpected[:5]} — check --model/--model-size")
    module.load_state_dict({k: v for k, v in state.items()}, strict=False)


def _is_tied_alias(module: nn.Module, key: str) -> bool:
    # RobertaLMHead.weight is embed_tokens.weight; a file that stores it once is complete.
    return key.endswith("lm_head.weight")


def save_model(bundle, directory: str | Path) -> Path:
    """Write ``model.safetensors`` + ``config.json``: loadable with ``load_saved_model``, no DeepSpeed."""
    state = {k: v.detach().float().cpu().contiguous() for k, v in bundle.module.state_dict().items()}
    return save_state(state, bundle.config, directory)


def save_state(state: dict, config: dict, directory: str | Path) -> Path:
    from safetensors.torch import save_file

    from bioprune.engine.io.atomic import atomic_path, write_json

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # tied tensors (RNA-FM's embedding and LM projection) are stored under both names
    state = {k: v.clone().contiguous() for k, v in state.items()}
    with atomic_path(directory / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    write_json(directory / "config.json", config)
    return directory


def load_saved_model(directory: str | Path):
    from bioprune.engine.models import build_model

    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text())
    bundle = build_model(config["model"], config["size"])
    load_weights(bundle.module, str(directory / "model.safetensors"))
    return bundle
