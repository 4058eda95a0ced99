"""The model families, built from configs (never downloaded), with MLM logits out.

``rnafm`` (:mod:`.rnafm`): ``fm.BioBertModel`` with the RNA alphabet of the ``fm`` package.
``esmc`` (:mod:`.esmc`): ``esm.models.esmc.ESMC`` with its ``EsmSequenceTokenizer``.
``esm2`` and ``hf`` (:mod:`.hf`): Hugging Face ``EsmForMaskedLM`` from a config, or any local
Hugging Face masked-LM directory. Each family has a ``tiny`` size that trains on a laptop CPU,
used by the tests and the demo.

Everything downstream (batching, per-sample gradients, training, evaluation) talks to a
:class:`~.bundle.ModelBundle`. This module is the registry: :func:`build_model` by family name.
Checkpoint I/O is in :mod:`.checkpoint`; ``--data``/``--model`` loading in :mod:`.inputs`.
May import ``runtime``, ``io`` and ``data``.
"""
from __future__ import annotations

from pathlib import Path

from bioprune.engine.models.bundle import (MOLECULE, ModelBundle, init_from_scratch,
                                           trainable_parameters)
from bioprune.engine.models.checkpoint import (load_saved_model, load_weights,
                                               save_model, save_state)
from bioprune.engine.models.esmc import ESMC_SIZES, build_esmc
from bioprune.engine.models.hf import ESM2_SIZES, build_esm2, build_hf
from bioprune.engine.models.rnafm import RNAFM_SIZES, build_rnafm

BUILDERS = {"rnafm": build_rnafm, "esmc": build_esmc, "esm2": build_esm2}
MODEL_NAMES = (*BUILDERS, "hf")
SIZES = {"rnafm": RNAFM_SIZES, "esmc": ESMC_SIZES, "esm2": ESM2_SIZES}


def build_model(name: str, size: str = "tiny", checkpoint: str | None = None) -> ModelBundle:
    """A model of family ``name``: ``rnafm``, ``esmc``, ``esm2`` with a size of :data:`SIZES`, or
    ``hf`` with ``size`` = a local Hugging Face model directory (also written ``hf:DIR``)."""
    if name.startswith("hf:"):
        name, size = "hf", name[3:]
    if checkpoint and not Path(checkpoint).exists():
        raise FileNotFoundError(f"--checkpoint {checkpoint}: no such file")
    if name == "hf":
        return build_hf(size, checkpoint)
    if name not in SIZES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    if size not in SIZES[name]:
        raise ValueError(f"unknown size {size!r} for {name}; "
                         f"choose one of {', '.join(SIZES[name])}")
    return BUILDERS[name](size, checkpoint)


__all__ = ["BUILDERS", "MODEL_NAMES", "SIZES", "MOLECULE", "ModelBundle", "build_model",
           "init_from_scratch", "trainable_parameters", "load_saved_model", "load_weights",
           "save_model", "save_state"]
