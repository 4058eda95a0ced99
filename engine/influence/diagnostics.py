"""What a user needs to judge a score run (written into ``manifest.json``):

- ``score_contributions``: the share of the total score mass Σ_z I(z) from each parameter group
  (token embeddings, positional embeddings, attention q / k / v / qkv (fused) / out,
  feed-forward, layer norms, LM head, other), fractions summing to 1;
- ``length_spearman``: Spearman(score, length) over the scored sequences — a score that mostly
  ranks by length makes CCI strata length bins;
- covered / excluded parameter counts (see ``damping``).
"""
from __future__ import annotations

import re

from torch import nn

# Spearman(score, length) lives with the scores (selection reports it too); re-exported here
from bioprune.engine.io.length_bias import length_lines, length_spearman, spearman  # noqa: F401

GROUPS = ("token_embeddings", "positional_embeddings", "attention_q", "attention_k",
          "attention_v", "attention_qkv", "attention_out", "feed_forward", "layer_norms",
          "lm_head", "other")

_HEAD = re.compile(r"(^|\.)(lm_head|sequence_head|cls\.predictions)(\.|$)")
_LINEAR = [
    ("attention_q", re.compile(r"(^|\.)(q_proj|query)$")),
    ("attention_k", re.compile(r"(^|\.)(k_proj|key)$")),
    ("attention_v", re.compile(r"(^|\.)(v_proj|value)$")),
    ("attention_qkv", re.compile(r"(layernorm_qkv|qkv|in_proj)")),
    ("attention_out", re.compile(r"(out_proj|attention\.output\.dense|attn\.o)$")),
    ("feed_forward", re.compile(r"(fc1|fc2|ffn|intermediate|mlp|(^|\.)output\.dense)")),
]


def parameter_groups(module: nn.Module, params) -> dict[str, str]:
    """{parameter name: group} for ``params`` (names as ``module.named_parameters`` gives them)."""
    owner = {}
    for mname, m in module.named_modules():
        for pname, p in m.named_parameters(recurse=False):
            owner.setdefault(id(p), (mname, m))
    out = {}
    for name, p in params:
        mname, m = owner.get(id(p), ("", None))
        cls = type(m).__name__.lower() if m is not None else ""
        if isinstance(m, nn.Embedding) or "embedding" in cls:
            out[name] = ("positional_embeddings" if "position" in cls or "position" in mname
                         else "token_embeddings")
        elif _HEAD.search(mname):
            out[name] = "lm_head"
        elif isinstance(m, nn.LayerNorm) or "norm" in cls:
            out[name] = "layer_norms"
        elif isinstance(m, nn.Linear):
            out[name] = next((g for g, rx in _LINEAR if rx.search(mname)), "other")
        else:
            out[name] = "other"
    return out


def contributions(mass: dict[str, float]) -> dict[str, float]:
    """{group: fraction of the total} over every group in GROUPS (zeros kept), summing to 1."""
    total = float(sum(mass.values()))
    return {g: (float(mass.get(g, 0.0)) / total if total > 0 else 0.0) for g in GROUPS}


def add_mass(acc: dict[str, float], mass: dict[str, float]) -> dict[str, float]:
    for g, v in mass.items():
        acc[g] = acc.get(g, 0.0) + float(v)
    return acc


# threshold of the end-of-run warning: most of the score from one parameter group (the
# feed-forward blocks hold about two thirds of a transformer's weights, and half the score mass
# is usual for them: tiny ESM-C on NetSurfP, 50 %); the length warning is shared with selection
DOMINANT_SHARE = 0.75


def summary_lines(contrib: dict[str, float], rho: float) -> list[str]:
    """The scoring run's closing summary: the largest score shares, Spearman(score, length),
    and a warning with what to do when either says the ranking is mostly one thing."""
    top = sorted(contrib.items(), key=lambda kv: -kv[1])[:3]
    lines = ["score mass by parameter group: " + ", ".join(f"{g} {v:.0%}" for g, v in top)]
    if top and top[0][1] > DOMINANT_SHARE:
        lines.append(f"warning: {top[0][0]} holds {top[0][1]:.0%} of the score mass, so the "
                     "ranking is mostly that group's; check it is meant (--params to choose the "
                     "scored parameters, --damping-alpha for the relative damping)")
    return lines + length_lines(rho)
