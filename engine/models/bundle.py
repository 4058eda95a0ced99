"""``ModelBundle``: what every stage needs of a model — the ``nn.Module`` that maps tokens (B, L) to
MLM logits (B, L, V) (and ``embed`` to last-layer representations), its special token ids and the
residue → token lookup table; plus the initialisation and parameter listing shared by families."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

MOLECULE = {"rnafm": "rna", "esmc": "protein", "esm2": "protein"}   # family -> its molecule
# (a Hugging Face directory, family "hf", says its molecule through its vocabulary)


@dataclass
class ModelBundle:
    name: str
    size: str
    module: nn.Module             # tokens (B, L) -> logits (B, L, V)
    pad_id: int
    mask_id: int
    bos_id: int
    eos_id: int
    unk_id: int
    residue_lut: np.ndarray       # uint8 normalised residue byte -> token id (int64 array of 256)
    random_residue_ids: np.ndarray  # canonical residue tokens used for the 10% random replacement
    max_residues: int             # longest sequence (residues, BOS/EOS excluded) the model takes
    # modules whose activations are laid out (T, B, ...) instead of (B, T, ...)
    time_first: tuple[str, ...] = field(default_factory=tuple)
    config: dict = field(default_factory=dict)
    tokenizer: object = None      # Hugging Face families: saved beside exported weights

    @property
    def molecule(self) -> str:
        return self.config.get("molecule") or MOLECULE[self.name]

    def is_time_first(self, module_name: str) -> bool:
        return any(module_name == p or module_name.startswith(p + ".") for p in self.time_first)


def init_from_scratch(module: nn.Module) -> None:
    """BERT-style initialisation for a fresh model: N(0, 0.02) weights, zero biases.

    PyTorch's default N(0, 1) embedding would, through RNA-FM's tied LM projection, start
    training at logits of standard deviation ~sqrt(width) (a loss near 16 instead of ln|V|).

    Under ZeRO-3 (built inside ``deepspeed.zero.Init``) each module's parameters are gathered for
    its own initialisation, rank 0's values kept: one module is whole at a time.
    """
    from bioprune.engine.runtime.zero3 import gathered

    for m in module.modules():
        if not isinstance(m, (nn.Linear, nn.Embedding)):
            continue
        with gathered(m.parameters(recurse=False), modifier_rank=0):
            _init_module(m)


def _init_module(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    else:
        nn.init.normal_(m.weight, std=0.02)
        if m.padding_idx is not None:
            with torch.no_grad():
                m.weight[m.padding_idx].zero_()


def residue_lut(token_of: dict[str, int], letters: str, unknown_letters: str,
                unk_id: int) -> np.ndarray:
    lut = np.full(256, -1, dtype=np.int64)
    for ch in letters:
        lut[ord(ch)] = token_of[ch]
    for ch in unknown_letters:
        lut[ord(ch)] = unk_id
    return lut


def trainable_parameters(module: nn.Module, pattern: str | None = None):
    """(name, parameter) of every trainable parameter matching ``pattern`` (a regex), tied ones
    once."""
    import re

    rx = re.compile(pattern) if pattern else None
    seen: set[int] = set()
    out = []
    for name, p in module.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if rx is None or rx.search(name):
            out.append((name, p))
    return out
