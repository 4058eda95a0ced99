"""Hugging Face masked language models: ESM-2 presets built from their published configs
(``--model esm2 --model-size tiny|8m|35m|150m|650m|3b|15b``) and any local
``AutoModelForMaskedLM`` directory (``--model hf:DIR`` or ``--model hf --hf-path DIR``: its
``config.json``, weights and tokenizer; nothing is downloaded).

Behaviour the per-sample gradients rely on (checked against torch.func in the tests):
- the padding mask is passed as ``attention_mask`` (pad tokens are never attended to);
- ESM-2's rotary position embeddings have no parameters; its token dropout (embeddings of
  ``<mask>`` zeroed, the rest rescaled per sequence by (1 − 0.15·0.8) / (1 − observed mask
  ratio)) runs after the embedding module, so autograd carries it into the gradient that the
  embedding rule reads — nothing special is needed, and it is applied at scoring time exactly as
  in training. ESM-2 does not scale its embeddings;
- the LM head's decoder is tied to the token embedding (counted once; its per-sample gradient
  sums both uses) and its separate output bias has a rule of its own
  (:mod:`bioprune.engine.influence.grad_sample.hf_rules`);
- the contact head is frozen: it is not on the MLM path.

Exported models are Hugging Face directories (``save_pretrained``: ``config.json`` with the
bioprune keys added, ``model.safetensors``, tokenizer files), so ``from_pretrained(DIR)`` loads
them and so does :func:`bioprune.engine.models.load_saved_model`.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bioprune.engine.models.bundle import ModelBundle, init_from_scratch
from bioprune.engine.models.checkpoint import load_weights

# ESM-2's vocabulary (fair-esm's Alphabet "ESM-1b" order, as in the published tokenizer files)
ESM2_VOCAB = ["<cls>", "<pad>", "<eos>", "<unk>", "L", "A", "G", "V", "S", "E", "R", "T", "I",
              "D", "P", "K", "Q", "N", "F", "Y", "M", "H", "W", "C", "X", "B", "U", "Z", "O", ".",
              "-", "<null_1>", "<mask>"]
# layers / hidden / heads / FFN of the published ESM-2 models (Lin et al. 2023)
ESM2_SIZES = {
    "tiny": dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128),
    "8m": dict(num_hidden_layers=6, hidden_size=320, num_attention_heads=20,
               intermediate_size=1280),
    "35m": dict(num_hidden_layers=12, hidden_size=480, num_attention_heads=20,
                intermediate_size=1920),
    "150m": dict(num_hidden_layers=30, hidden_size=640, num_attention_heads=20,
                 intermediate_size=2560),
    "650m": dict(num_hidden_layers=33, hidden_size=1280, num_attention_heads=20,
                 intermediate_size=5120),
    "3b": dict(num_hidden_layers=36, hidden_size=2560, num_attention_heads=40,
               intermediate_size=10240),
    "15b": dict(num_hidden_layers=48, hidden_size=5120, num_attention_heads=40,
                intermediate_size=20480),
}
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
PROTEIN_EXTRA = "XBZUO"
NUCLEOTIDES = "ACGU"
IUPAC = "RYKMSWBDHVN"


class HfMLM(nn.Module):
    """An ``AutoModelForMaskedLM`` behind the bundle interface: tokens (B, L) → logits."""

    def __init__(self, net: nn.Module, pad_id: int):
        super().__init__()
        self.net = net
        self.pad_id = pad_id
        contact = getattr(getattr(net, "esm", None), "contact_head", None)
        if contact is not None:   # not on the MLM path (see the module docstring)
            for p in contact.parameters():
                p.requires_grad_(False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.net(input_ids=tokens, attention_mask=tokens.ne(self.pad_id).long()).logits

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Last-layer token representations (B, L, D); pad positions are not attended to."""
        out = self.net(input_ids=tokens, attention_mask=tokens.ne(self.pad_id).long(),
                       output_hidden_states=True)
        return out.hidden_states[-1]


def esm2_tokenizer():
    """ESM-2's tokenizer, built from its vocabulary (no download)."""
    from transformers import EsmTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        vocab = Path(tmp) / "vocab.txt"
        vocab.write_text("\n".join(ESM2_VOCAB) + "\n")
        return EsmTokenizer(vocab_file=str(vocab))


def esm2_config(size: str):
    from transformers import EsmConfig

    return EsmConfig(vocab_size=len(ESM2_VOCAB), mask_token_id=ESM2_VOCAB.index("<mask>"),
                     pad_token_id=ESM2_VOCAB.index("<pad>"), max_position_embeddings=1026,
                     position_embedding_type="rotary", token_dropout=True,
                     emb_layer_norm_before=False, layer_norm_eps=1e-5,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                     **ESM2_SIZES[size])


def build_esm2(size: str, checkpoint: str | None = None) -> ModelBundle:
    from transformers import EsmForMaskedLM

    net = EsmForMaskedLM(esm2_config(size))
    return _bundle(net, esm2_tokenizer(), "esm2", size, checkpoint, fresh=True)


def build_hf(path: str, checkpoint: str | None = None, *, name: str = "hf",
             size: str | None = None) -> ModelBundle:
    """A local Hugging Face masked-LM directory (weights included when the directory has them);
    ``name``/``size`` label it (an exported ESM-2 preset stays ``esm2``/its size)."""
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

    path = str(Path(path).expanduser().absolute())
    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(f"--hf-path {path}: no config.json (a Hugging Face model "
                                "directory written by save_pretrained is expected)")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    has_weights = any((Path(path) / f).exists() for f in
                      ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json"))
    if has_weights:
        net = AutoModelForMaskedLM.from_pretrained(path, local_files_only=True)
    else:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        net = AutoModelForMaskedLM.from_config(config)
    return _bundle(net, tokenizer, name, size or path, checkpoint, fresh=not has_weights)


def _bundle(net, tokenizer, name: str, size: str, checkpoint, fresh: bool) -> ModelBundle:
    vocab = tokenizer.get_vocab()
    molecule = molecule_of_vocab(vocab)
    module = HfMLM(net, tokenizer.pad_token_id)
    if fresh:
        init_from_scratch(module)
    if checkpoint:
        load_weights(module, checkpoint)
    canonical = AMINO_ACIDS if molecule == "protein" else NUCLEOTIDES
    lut = np.full(256, -1, dtype=np.int64)
    for ch in canonical + (PROTEIN_EXTRA if molecule == "protein" else IUPAC):
        tok = vocab.get(ch, vocab.get("T") if ch == "U" else None)
        lut[ord(ch)] = tok if tok is not None else tokenizer.unk_token_id
    return ModelBundle(
        name=name, size=size, module=module, pad_id=tokenizer.pad_token_id,
        mask_id=tokenizer.mask_token_id, bos_id=tokenizer.cls_token_id,
        eos_id=tokenizer.eos_token_id, unk_id=tokenizer.unk_token_id, residue_lut=lut,
        random_residue_ids=np.array([int(lut[ord(c)]) for c in canonical], dtype=np.int64),
        max_residues=int(net.config.max_position_embeddings) - 2,
        config={"model": name, "size": size, "molecule": molecule},
        tokenizer=tokenizer)


def molecule_of_vocab(vocab: dict) -> str:
    """protein when the vocabulary has the 20 amino acids, rna when it has A C G and U or T."""
    if all(c in vocab for c in AMINO_ACIDS):
        return "protein"
    if all(c in vocab for c in "ACG") and ("U" in vocab or "T" in vocab):
        return "rna"
    raise ValueError("cannot tell the molecule from the tokenizer's vocabulary: it has neither "
                     "the 20 amino acids nor A/C/G/U(T) as tokens")


def save_hf(bundle: ModelBundle, state: dict, directory: Path) -> None:
    """``save_pretrained`` of the trained weights (``state``: the wrapper's state dict), the
    tokenizer beside it, and the bioprune keys that :func:`load_saved_model` reads."""
    net = bundle.module.net
    bare = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}
    import os
    import shutil

    net.config.bioprune_model = bundle.name
    net.config.bioprune_size = bundle.size if bundle.name != "hf" else ""
    # written into a hidden sibling first, then moved file by file (config.json last), so a
    # reader never sees a config without its weights
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=directory))
    try:
        net.save_pretrained(str(tmp), state_dict=bare, safe_serialization=True)
        if bundle.tokenizer is not None:
            bundle.tokenizer.save_pretrained(str(tmp))
        files = sorted(tmp.iterdir(), key=lambda f: f.name == "config.json")
        for f in files:
            os.replace(f, directory / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_hf_dir(directory: Path, config: dict) -> ModelBundle:
    """A bioprune export of a Hugging Face family, read by ``from_pretrained`` (transformers may
    rename keys on disk, e.g. ESM's LayerNorm gamma/beta); an ESM-2 preset keeps its name."""
    if config.get("bioprune_model") == "esm2":
        return build_hf(str(directory), name="esm2", size=config["bioprune_size"])
    return build_hf(str(directory))
