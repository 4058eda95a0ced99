"""Subset-based self-influence (DESIGN steps 2-3): per-sample gradient rules (``grad_sample``),
the Fisher and scoring passes (``passes``) and the whole adapt → Fisher → score run
(``pipeline``). May import ``runtime``, ``io``, ``data``, ``models``, ``training`` (adaptation is
a training run) and ``bioprune.kernels``."""
