"""Squared per-sample gradients from hooks, never holding per-sample gradients of the whole model.

One small function per layer type (``layers.py``) turns a module's saved input and its output
gradient into per-sample gradient information, found through a registry (``registry.py``); the
hooks that call them live in one place (``collector.py``).
"""
from .collector import Mode, SquaredGradCollector  # noqa: F401
from .registry import handler_for, register  # noqa: F401
from . import hf_rules, layers  # noqa: F401  (register the built-in layer types)
