"""RNA-FM: ``fm.BioBertModel`` (an ESM-1b-style encoder) with the RNA alphabet of the ``fm``
package; sizes tiny / mid / base (the paper's 12 layers, 640 wide, 20 heads, FFN 5120). Loads
local state dicts and the released ``RNA-FM_pretrained.pth`` through fm's own loader."""
from __future__ import annotations

import argparse
import contextlib

import numpy as np
import torch
from torch import nn

from bioprune.engine.models.bundle import ModelBundle, init_from_scratch, residue_lut
from bioprune.engine.models.checkpoint import load_weights
from bioprune.engine.models.fm_attention import use_sdpa

RNAFM_SIZES = {
    "tiny": dict(layers=2, embed_dim=64, ffn_embed_dim=128, attention_heads=4),
    "mid": dict(layers=6, embed_dim=320, ffn_embed_dim=1280, attention_heads=10),
    "base": dict(layers=12, embed_dim=640, ffn_embed_dim=5120, attention_heads=20),
}
# ESM-C: d_model / n_heads / n_layers. 300M and 600M are the released models.
RNAFM_MAX_POSITIONS = 1024  # RNA-FM's learned positions (BOS and EOS included)


class RnaFmMLM(nn.Module):
    """fm.BioBertModel returning only MLM logits (the contact head is not on the MLM path)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        # The contact head never sees the MLM loss: freeze it so "all trainable parameters" are
        # exactly the ones the loss depends on, and DeepSpeed does not wait for its gradients.
        for p in self.net.contact_head.parameters():
            p.requires_grad_(False)
        # Attention through SDPA with the q/k/v/out projections kept as modules, whose hooks
        # give per-sample gradients (fm's own fast path bypasses them; its explicit path
        # materialises the attention matrix): see models.fm_attention. Training and scoring run
        # the same code.
        use_sdpa(self.net)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.net(tokens)["logits"]

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Last-layer token representations (B, L, D); pad positions are not attended to."""
        layers = self.net.num_layers
        return self.net(tokens, repr_layers=[layers])["representations"][layers]


def _rnafm_args(size: str) -> argparse.Namespace:
    arch = RNAFM_SIZES[size]
    return argparse.Namespace(
        arch="roberta_large", max_positions=RNAFM_MAX_POSITIONS, emb_layer_norm_before=True,
        token_dropout=False, final_bias=True, **arch)


def build_rnafm(size: str, checkpoint: str | None = None) -> ModelBundle:
    import fm

    alphabet = fm.Alphabet.from_architecture("roberta_large", theme="rna")
    released = bool(checkpoint) and _is_rnafm_release(checkpoint)
    if released:
        # The released RNA-FM_pretrained.pth: {"args": Namespace, "model": state dict}; fm's own
        # loader upgrades the key names. Its architecture wins over --model-size.
        data = torch.load(checkpoint, map_location="cpu", weights_only=False)
        net, alphabet = fm.pretrained.load_model_and_alphabet_core("rna-fm", data, None,
                                                                   theme="rna")
        args = net.args
        checkpoint = None
        size = next((k for k, a in RNAFM_SIZES.items()
                     if all(getattr(args, f, None) == v for f, v in a.items())), None)
        if size is None:
            raise ValueError("the RNA-FM checkpoint's architecture matches no size in "
                             "bioprune.engine.models.rnafm.RNAFM_SIZES; add it there")
    else:
        args = _rnafm_args(size)
        with _children_gathered_for_reset():
            net = fm.BioBertModel(args, alphabet)
    module = RnaFmMLM(net)
    if not released:
        init_from_scratch(module)
    if checkpoint:
        load_weights(module, checkpoint)
    tok = alphabet.tok_to_idx
    return ModelBundle(
        name="rnafm", size=size, module=module, pad_id=alphabet.padding_idx,
        mask_id=alphabet.mask_idx, bos_id=alphabet.cls_idx, eos_id=alphabet.eos_idx,
        unk_id=alphabet.unk_idx,
        # IUPAC ambiguity codes become <unk> (the corpus counts them); fm's alphabet has tokens
        # for them but RNA-FM was pretrained on A/C/G/U only.
        residue_lut=residue_lut(tok, "ACGU", "RYKMSWBDHVN", alphabet.unk_idx),
        random_residue_ids=np.array([tok[c] for c in "ACGU"], dtype=np.int64),
        max_residues=int(args.max_positions) - 2,
        time_first=("net.layers", "net.emb_layer_norm_after"),
        config={"model": "rnafm", "size": size, **{k: v for k, v in vars(args).items()
                                                  if isinstance(v, (int, float, str, bool))}},
    )


@contextlib.contextmanager
def _children_gathered_for_reset():
    """fm's attention initialises its q/k/v/out projections in its own ``reset_parameters``,
    after ZeRO-3 (``deepspeed.zero.Init``) has already partitioned those children: gather them
    around it (rank 0's values kept). A no-op when nothing is partitioned."""
    from fm.multihead_attention import MultiheadAttention

    from bioprune.engine.runtime.zero3 import gathered

    original = MultiheadAttention.reset_parameters

    def reset_parameters(self):
        with gathered(self.parameters(), modifier_rank=0):
            original(self)

    MultiheadAttention.reset_parameters = reset_parameters
    try:
        yield
    finally:
        MultiheadAttention.reset_parameters = original


def _is_rnafm_release(path: str) -> bool:
    if not str(path).endswith((".pth", ".pt")):
        return False
    try:
        data = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception:  # noqa: BLE001 - whatever torch.load raises: not the release format
        return False
    return isinstance(data, dict) and "args" in data and "model" in data
