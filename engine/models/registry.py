"""The model families by name: :func:`build_model` and the sizes each family offers."""
from __future__ import annotations

from pathlib import Path

from bioprune.engine.models.bundle import ModelBundle
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
