"""module type -> per-sample gradient rule.

A rule is ``fn(module, x, d, sink)``: ``x`` is the module's input and ``d`` the gradient of its
output, both batch-first (B, T, ...); it reports each parameter's per-sample gradient to ``sink``
either as a linear map (``sink.linear(weight, bias, x, d)``: G_b = d_bᵀ x_b, reduced by the fused
kernels) or materialised (``sink.add(param, g)`` with g of shape (B, *param.shape), for the small
parameters: norms, biases, embeddings).

``needs`` names child modules whose *outputs* the rule needs instead of the module's own input
(RoBERTa's LM head projects the output of its inner layer norm).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn


@dataclass(frozen=True)
class Rule:
    fn: Callable
    input_from_child: str | None = None  # use this child's output as x
    uses_raw_input: bool = False         # x is the module's (integer) input, e.g. token ids


_RULES: dict[type, Rule] = {}


def register(*types: type, input_from_child: str | None = None, uses_raw_input: bool = False):
    def deco(fn):
        for t in types:
            _RULES[t] = Rule(fn, input_from_child, uses_raw_input)
        return fn
    return deco


def handler_for(module: nn.Module) -> Rule | None:
    """The rule of the most specific registered type in the module's MRO."""
    for t in type(module).__mro__:
        if t in _RULES:
            return _RULES[t]
    return None
