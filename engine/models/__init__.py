"""The model families, built from configs (never downloaded), with MLM logits out.

``rnafm`` (:mod:`.rnafm`): ``fm.BioBertModel`` with the RNA alphabet of the ``fm`` package.
``esmc`` (:mod:`.esmc`): ``esm.models.esmc.ESMC`` with its ``EsmSequenceTokenizer``.
``esm2`` and ``hf`` (:mod:`.hf`): Hugging Face ``EsmForMaskedLM`` from a config, or any local
Hugging Face masked-LM directory. Each family has a ``tiny`` size that trains on a laptop CPU,
used by the tests and the demo.

Everything downstream (batching, per-sample gradients, training, evaluation) talks to a
:class:`~.bundle.ModelBundle`. :func:`build_model` by family name is in :mod:`.registry`;
weights in and out of a module in :mod:`.checkpoint`, the exported directory in :mod:`.saved`;
``--data``/``--model`` loading in :mod:`.inputs`; start-up checks of the --data / --model flags
in :mod:`.validate`; RNA-FM's attention through SDPA, projections kept as hooked modules, in
:mod:`.fm_attention`.
May import ``runtime``, ``io`` and ``data``.
"""
from __future__ import annotations

from bioprune.engine.models.bundle import (MOLECULE, ModelBundle, init_from_scratch,
                                           trainable_parameters)
from bioprune.engine.models.checkpoint import load_weights
from bioprune.engine.models.registry import BUILDERS, MODEL_NAMES, SIZES, build_model
from bioprune.engine.models.saved import load_saved_model, save_model, save_state

__all__ = ["BUILDERS", "MODEL_NAMES", "SIZES", "MOLECULE", "ModelBundle", "build_model",
           "init_from_scratch", "trainable_parameters", "load_saved_model", "load_weights",
           "save_model", "save_state"]
