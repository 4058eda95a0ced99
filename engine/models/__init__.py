"""The two model families, built from configs (never downloaded), with MLM logits out.

``rnafm``: ``fm.BioBertModel`` (RNA-FM's ESM-1b-style encoder) with the RNA alphabet of the
``fm`` package. ``esmc``: ``esm.models.esmc.ESMC`` with its ``EsmSequenceTokenizer``. Each has a
``tiny`` size that trains on a laptop CPU, used by the tests and the demo.

Everything downstream (batching, per-sample gradients, training) talks to a ``ModelBundle``: the
``nn.Module`` that maps tokens (B, L) to logits (B, L, V), plus the token ids and the residue →
token lookup table that tokenisation needs.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

MODEL_NAMES = ("rnafm", "esmc")

# name -> size -> architecture. RNA-FM: 12 layers, 640 wide, 20 heads, FFN 5120 (the paper's).
RNAFM_SIZES = {
    "tiny": dict(layers=2, embed_dim=64, ffn_embed_dim=128, attention_heads=4),
    "mid": dict(layers=6, embed_dim=320, ffn_embed_dim=1280, attention_heads=10),
    "base": dict(layers=12, embed_dim=640, ffn_embed_dim=5120, attention_heads=20),
}
# ESM-C: d_model / n_heads / n_layers. 300M and 600M are the released models.
ESMC_SIZES = {
    "tiny": dict(d_model=64, n_heads=4, n_layers=2),
    "mid": dict(d_model=320, n_heads=5, n_layers=6),
    "300m": dict(d_model=960, n_heads=15, n_layers=30),
    "600m": dict(d_model=1152, n_heads=18, n_layers=36),
}
SIZES = {"rnafm": RNAFM_SIZES, "esmc": ESMC_SIZES}
RNAFM_MAX_POSITIONS = 1024  # RNA-FM's learned positions (BOS and EOS included)
MOLECULE = {"rnafm": "rna", "esmc": "protein"}


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

    @property
    def molecule(self) -> str:
        return MOLECULE[self.name]

    def is_time_first(self, module_name: str) -> bool:
        return any(module_name == p or module_name.startswith(p + ".") for p in self.time_first)


class RnaFmMLM(nn.Module):
    """fm.BioBertModel returning only MLM logits (the contact head is not on the MLM path)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        # The contact head never sees the MLM loss: freeze it so "all trainable parameters" are
        # exactly the ones the loss depends on, and DeepSpeed does not wait for its gradients.
        for p in self.net.contact_head.parameters():
            p.requires_grad_(False)
        # fm's attention has a fast path through F.multi_head_attention_forward that bypasses the
        # q/k/v/out projection modules, and so their hooks. The explicit path computes the same
        # function with the projections as modules; use it everywhere (training too) so training
        # and scoring run the same code.
        for m in self.net.modules():
            if hasattr(m, "enable_torch_version"):
                m.enable_torch_version = False

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.net(tokens)["logits"]

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Last-layer token representations (B, L, D); pad positions are not attended to."""
        layers = self.net.num_layers
        return self.net(tokens, repr_layers=[layers])["representations"][layers]


class EsmcMLM(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.net(sequence_tokens=tokens).sequence_logits

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Last-layer token representations (B, L, D); pad positions are not attended to."""
        return self.net(sequence_tokens=tokens).embeddings


def init_from_scratch(module: nn.Module) -> None:
    """BERT-style initialisation for a fresh model: N(0, 0.02) weights, zero biases.

    PyTorch's default N(0, 1) embedding would, through RNA-FM's tied LM projection, start
    training at logits of standard deviation ~sqrt(width) (a loss near 16 instead of ln|V|).
    """
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()


def _lut(token_of: dict[str, int], letters: str, unknown_letters: str, unk_id: int) -> np.ndarray:
    lut = np.full(256, -1, dtype=np.int64)
    for ch in letters:
        lut[ord(ch)] = token_of[ch]
    for ch in unknown_letters:
        lut[ord(ch)] = unk_id
    return lut


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
        net, alphabet = fm.pretrained.load_model_and_alphabet_core("rna-fm", data, None, theme="rna")
        args = net.args
        checkpoint = None
        size = next((k for k, a in RNAFM_SIZES.items()
                     if all(getattr(args, f, None) == v for f, v in a.items())), None)
        if size is None:
            raise ValueError("the RNA-FM checkpoint's architecture matches no size in "
                             "bioprune.engine.models.RNAFM_SIZES; add it there")
    else:
        args = _rnafm_args(size)
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
        residue_lut=_lut(tok, "ACGU", "RYKMSWBDHVN", alphabet.unk_idx),
        random_residue_ids=np.array([tok[c] for c in "ACGU"], dtype=np.int64),
        max_residues=int(args.max_positions) - 2,
        time_first=("net.layers", "net.emb_layer_norm_after"),
        config={"model": "rnafm", "size": size, **{k: v for k, v in vars(args).items()
                                                  if isinstance(v, (int, float, str, bool))}},
    )


def _is_rnafm_release(path: str) -> bool:
    if not str(path).endswith((".pth", ".pt")):
        return False
    try:
        data = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception:
        return False
    return isinstance(data, dict) and "args" in data and "model" in data


def build_esmc(size: str, checkpoint: str | None = None) -> ModelBundle:
    from esm.models.esmc import ESMC
    from esm.tokenization import EsmSequenceTokenizer

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
        residue_lut=_lut(vocab, standard + "XBZUO", "", vocab["<unk>"]),
        random_residue_ids=np.array([vocab[c] for c in standard], dtype=np.int64),
        max_residues=2046,
        time_first=(),
        config={"model": "esmc", "size": size, **arch},
    )


def build_model(name: str, size: str = "tiny", checkpoint: str | None = None) -> ModelBundle:
    if name not in SIZES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    if size not in SIZES[name]:
        raise ValueError(f"unknown size {size!r} for {name}; choose one of {', '.join(SIZES[name])}")
    if checkpoint and not Path(checkpoint).exists():
        raise FileNotFoundError(f"--checkpoint {checkpoint}: no such file")
    return (build_rnafm if name == "rnafm" else build_esmc)(size, checkpoint)


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


def save_model(bundle: ModelBundle, directory: str | Path) -> Path:
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


def load_saved_model(directory: str | Path) -> ModelBundle:
    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text())
    bundle = build_model(config["model"], config["size"])
    load_weights(bundle.module, str(directory / "model.safetensors"))
    return bundle


def trainable_parameters(module: nn.Module, pattern: str | None = None):
    """(name, parameter) of every trainable parameter matching ``pattern`` (a regex), tied ones once."""
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
