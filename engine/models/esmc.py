"""ESM-C: ``esm.models.esmc.ESMC`` with its ``EsmSequenceTokenizer``; sizes tiny / mid / 300m / 600m
(the released models: 960/15/30 and 1152/18/36)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from bioprune.engine.models.bundle import ModelBundle, init_from_scratch, residue_lut
from bioprune.engine.models.checkpoint import load_weights

ESMC_SIZES = {
    "tiny": dict(d_model=64, n_heads=4, n_layers=2),
    "mid": dict(d_model=320, n_heads=5, n_layers=6),
    "300m": dict(d_model=960, n_heads=15, n_layers=30),
    "600m": dict(d_model=1152, n_heads=18, n_layers=36),
}


class EsmcMLM(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.net(sequence_tokens=tokens).sequence_logits

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Last-layer token representations (B, L, D); pad positions are not attended to."""
        return self.net(sequence_tokens=tokens).embeddings


ESM_MISSING = ("ESM-C needs the `esm` package, which is not installed. Its declared requirements "
               "(torchvision, torchtext, transformers<4.48.2) conflict with current torch, so "
               "install it without them and add what it really imports: "
               "pip install --no-deps esm && pip install 'bioprune[esmc]'")


def build_esmc(size: str, checkpoint: str | None = None) -> ModelBundle:
    try:
        from esm.models.esmc import ESMC
        from esm.tokenization import EsmSequenceTokenizer
    except ModuleNotFoundError as e:
        if e.name != "esm" and not (e.name or "").startswith("esm."):
            raise
        raise SystemExit(ESM_MISSING) from e

    tokenizer = EsmSequenceTokenizer()
    arch = ESMC_SIZES[size]
    net = ESMC(tokenizer=tokenizer, use_flash_attn=False, **arch)
    module = EsmcMLM(net)
    init_from_scratch(module)
    if checkpoint:
        load_weights(module, checkpoint)
    vocab = tokenizer.get_vocab()
    standard = "ACDEFGHIKLMNPQRSTVWY"
    return ModelBundle(
        name="esmc", size=size, module=module, pad_id=tokenizer.pad_token_id,
        mask_id=tokenizer.mask_token_id, bos_id=tokenizer.cls_token_id,
        eos_id=tokenizer.eos_token_id, unk_id=vocab["<unk>"],
        # X/B/Z/U/O are ESM-C vocabulary tokens of their own.
        residue_lut=residue_lut(vocab, standard + "XBZUO", "", vocab["<unk>"]),
        random_residue_ids=np.array([vocab[c] for c in standard], dtype=np.int64),
        max_residues=2046,
        time_first=(),
        config={"model": "esmc", "size": size, **arch},
    )
