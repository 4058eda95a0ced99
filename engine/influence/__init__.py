"""Subset-based self-influence (DESIGN steps 2-3): per-sample gradient rules (``grad_sample``),
the Fisher and scoring passes (``passes``), the damping (``damping``), ``score.py``'s settings
(``settings``), where the model, Fisher and weights live (``placement``: dense or ZeRO-3) and the
whole adapt → Fisher → score run as phases (``pipeline``). May import ``runtime``, ``io``,
``data``, ``models``, ``training`` (adaptation is a training run) and ``bioprune.kernels``."""
