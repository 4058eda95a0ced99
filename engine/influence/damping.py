"""Damping λ and the coordinates a score uses (DESIGN "Damping").

I(z) = Σ_j g_zj² / (F_j + λ) over the *included* coordinates j:

- **covered** parameters: the scored ones (``--params``), less those whose gradient is zero by
  construction (``zero_gradient_parameters``: an attention key-projection bias, to which softmax
  is invariant) — their Fisher entries would be round-off;
- **excluded** coordinates: covered entries that D_sub cannot estimate, F_j ≤ τ·mean(F) with the
  relative threshold τ (``exclude_below``; learned position rows beyond D_sub's lengths, tokens
  absent from D_sub). They get weight 0 and are counted, so they can never dominate a score
  (with τ = 0 only exact zeros are excluded, which contribute nothing to D_sub's own scores;
  τ = None excludes nothing, the behaviour before: unseen coordinates weigh 1/λ);
- λ: ``relative`` (default) λ = α·mean(F), the mean over every covered entry, so one α fits any
  model, corpus and precision; or ``absolute`` (the public reference code's λ = 1e-8).

``influence_weights`` returns w = 1/(F + λ) (0 where excluded); ``resolve`` the record for the
manifest: ``{"mode", "alpha", "lambda", "exclude_below", "threshold", "fisher_mean", "included",
"excluded"}``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

DEFAULT_ALPHA = 1e-2          # relative λ = α · mean(F); chosen by launch/bench/scores.py
DEFAULT_EXCLUDE_BELOW = 1e-12  # τ: F_j ≤ τ · mean(F) is "not estimated by D_sub"
REFERENCE_DAMPING = 1e-8      # the public reference code's absolute λ


@dataclass(frozen=True)
class Damping:
    mode: str = "relative"            # "relative" | "absolute"
    alpha: float = DEFAULT_ALPHA      # relative: λ = alpha · mean(F)
    value: float = REFERENCE_DAMPING  # absolute: λ = value
    exclude_below: float | None = DEFAULT_EXCLUDE_BELOW  # None: exclude nothing (the old way)

    def __post_init__(self):
        if self.mode not in ("relative", "absolute"):
            raise ValueError(f"damping mode must be 'relative' or 'absolute', got {self.mode!r}")
        if self.mode == "relative" and not self.alpha > 0:
            raise ValueError(f"relative damping needs alpha > 0 (got {self.alpha})")
        if self.mode == "absolute" and not self.value > 0:
            raise ValueError(f"damping must be > 0 (got {self.value})")
        if self.exclude_below is not None and not self.exclude_below >= 0:
            raise ValueError(f"exclusion threshold must be >= 0 (got {self.exclude_below})")

    def asdict(self) -> dict:
        return asdict(self)


def _summed(values: list[float], allreduce) -> list[float]:
    """``values`` summed over the ranks that hold parts of the Fisher (``allreduce``: a float64
    array -> its sum over them, e.g. ``runtime.collectives.Comm().allreduce``; None: this
    process holds all of it)."""
    if allreduce is None:
        return values
    import numpy as np

    return allreduce(np.asarray(values, dtype=np.float64)).tolist()


def fisher_mean(fisher: dict[str, torch.Tensor], allreduce=None) -> float:
    """mean(F) over every covered entry (float64 sum)."""
    total, count = _summed([sum(float(f.double().sum()) for f in fisher.values()),
                            float(sum(f.numel() for f in fisher.values()))], allreduce)
    return total / max(count, 1)


def resolve(fisher: dict[str, torch.Tensor], damping: Damping | float, allreduce=None) -> dict:
    """Effective λ and exclusion threshold for this Fisher, with the counts. Under ZeRO-3 each
    rank passes its partitions (without padding) and ``allreduce`` sums the statistics."""
    damping = as_damping(damping)
    mean = fisher_mean(fisher, allreduce)
    lam = damping.alpha * mean if damping.mode == "relative" else damping.value
    if not lam > 0:
        raise ValueError(f"effective damping λ = {lam} (mean Fisher {mean}): the Fisher is all "
                         "zero; check D_sub and the covered parameters")
    threshold = -1.0 if damping.exclude_below is None else damping.exclude_below * mean
    included, covered = (int(v) for v in _summed(
        [float(sum(int((f.double() > threshold).sum()) for f in fisher.values())),
         float(sum(f.numel() for f in fisher.values()))], allreduce))
    return {"mode": damping.mode, "alpha": damping.alpha if damping.mode == "relative" else None,
            "lambda": lam, "exclude_below": damping.exclude_below,
            "threshold": None if damping.exclude_below is None else threshold,
            "fisher_mean": mean, "included": included, "excluded": covered - included}


def as_damping(damping: Damping | float) -> Damping:
    """A bare float is absolute λ with nothing excluded (the original damping: no relative λ,
    no exclusions)."""
    if isinstance(damping, Damping):
        return damping
    return Damping(mode="absolute", value=float(damping), exclude_below=None)


def influence_weights(fisher: dict[str, torch.Tensor], damping: Damping | float, device,
                      allreduce=None) -> dict[str, torch.Tensor]:
    """w_j = 1/(F_j + λ) for included j, 0 for excluded; fp32 on ``device``. The record of λ,
    the threshold and the counts is ``resolve(fisher, damping)``. Works on partitions as well
    (ZeRO-3: λ and the threshold come from the statistics summed by ``allreduce``)."""
    info = resolve(fisher, as_damping(damping), allreduce)
    lam = info["lambda"]
    thr = -1.0 if info["threshold"] is None else info["threshold"]
    weights = {}
    for n, f in fisher.items():
        f = f.double()
        w = torch.where(f > thr, 1.0 / (f + lam), torch.zeros_like(f))
        weights[n] = w.float().to(device)
    return weights


def _key_bias_is_shift_invariant(attn: nn.Module) -> bool:
    """True when a key bias adds the same q·b to every logit of a query's softmax: no extra
    key/value rows, no rotary or relative position terms on the keys."""
    if getattr(attn, "bias_k", None) is not None:
        return False
    if getattr(attn, "rot_emb", None) is not None \
            or getattr(attn, "rotary_embeddings", None) is not None:
        return False
    pe = getattr(attn, "position_embedding_type", "absolute")
    return pe in (None, "absolute")


def zero_gradient_parameters(module: nn.Module, params) -> list[str]:
    """Names among ``params`` whose gradient is zero by construction: the bias of an attention
    key projection (fm's ``k_proj``, Hugging Face's ``key``) — softmax(q·(k + b)) = softmax(q·k)
    since q·b is shared by every key of a query."""
    by_id = {id(p): n for n, p in params}
    out = []
    for _, m in module.named_modules():
        for attr in ("k_proj", "key"):
            k = getattr(m, attr, None)
            if (isinstance(k, nn.Linear) and k.bias is not None and id(k.bias) in by_id
                    and _key_bias_is_shift_invariant(m)):
                out.append(by_id[id(k.bias)])
    return out


def covered_parameters(module: nn.Module, params) -> tuple[list, list[str]]:
    """(params less the zero-gradient ones, the names left out)."""
    zero = set(zero_gradient_parameters(module, params))
    return [(n, p) for n, p in params if n not in zero], sorted(zero)
