"""The hooks: capture each layer's input in forward and its output gradient in backward.

Use::

    with SquaredGradCollector(bundle, params, Mode.FISHER) as col:
        loss = per_sample_loss(model(tokens), labels).sum()  # Σ_b ℓ_b: d of sample b is ∂ℓ_b
        loss.backward()
        col.flush()                                          # fold in the materialised params
    col.fisher  # {name: Σ_b g_b ⊙ g_b}

Inside the context every parameter is frozen (``requires_grad=False``) and the embedding outputs
are made leaves that require grad, so autograd computes activation gradients only: the weight
gradient GEMMs of a training step are replaced by the per-sample reductions of the kernels. The
cost of a pass is therefore about one training forward + backward.

Modes:
- ``FISHER``: ``fisher[name] += Σ_b g_b²`` (fp32, the parameter's shape).
- ``SCORE``: ``scores[b] += Σ_j w_j g_bj²`` with ``w = 1/(F + λ)`` per parameter.
- ``PER_SAMPLE``: ``squared[name] = g_b²`` materialised (B, *shape); for tests and small models.

A parameter used by more than one layer (RNA-FM's token embedding is also its LM projection)
has its per-sample gradient materialised from every use, summed, and only then squared.

Several masked copies per sample (``copies`` = K, rows b·K … b·K + K − 1 of the batch, see
``data.batching.MaskPlan``): the sample's gradient is the SUM over its copies (the loss is their
mean; autograd already scales each row by 1/K), squared only after summing. A linear layer's
per-sample weight gradient G_b = Σ_k D_bkᵀ X_bk is D_bᵀ X_b over the copies' rows laid end to end
along the token axis, so the kernels see one longer sample per b: exact, and no kernel change.
(Concatenating the copies in the *input* instead would let them attend to each other and shift
their positions — a different function; here each copy runs as its own row.) Materialised
contributions are summed over the K rows; a table whose rows every copy indexes identically
(learned positions) sums d over the copies first.

Cross-term scores (``cross = True``, SCORE mode, K ≥ 2 copies): instead of ‖Σ_k g_k/K‖²_W, the
U-statistic (‖Σ_k g_k‖²_W − Σ_k ‖g_k‖²_W) / (K(K−1)) = Σ_{k≠l} ⟨g_k, g_l⟩_W / (K(K−1)), an
unbiased estimate of ‖E_m g‖²_W for independent masks, without the single-mask noise term
E‖g‖² − ‖E g‖² that the plain mean of K copies only shrinks by 1/K. Every reduction is done
twice, once over the joined copies and once per row; the second costs another kernel call per
layer, never another forward or backward. (Autograd gives each row g_k/K, so the per-sample value
is K/(K−1) · (‖Σ_k g_k/K‖² − Σ_k ‖g_k/K‖²).) The Fisher is unchanged.

Diagnostics: in SCORE mode ``group_mass[group]`` accumulates Σ_b of each parameter group's part
of the scores (``groups``: {parameter name: group}).
"""
from __future__ import annotations

import contextlib
import enum
from collections import Counter

import torch
from torch import nn

from .registry import handler_for
from .storage import DenseFisher, as_weight_store


class Mode(enum.Enum):
    FISHER = "fisher"
    SCORE = "score"
    PER_SAMPLE = "per_sample"


class SquaredGradCollector:
    def __init__(self, bundle, params: list[tuple[str, nn.Parameter]], mode: Mode,
                 weights=None, backend: str | None = None,
                 groups: dict[str, str] | None = None, fisher_store=None):
        self.bundle, self.mode, self.backend = bundle, mode, backend
        self.copies = 1  # masked copies per sample in the current batch (set before backward)
        self.cross = False  # SCORE mode: the cross-term estimator (set with the copies)
        self.group_of = {id(p): (groups or {}).get(n, "other") for n, p in params}
        self.group_mass: dict[str, float] = {}
        self.model: nn.Module = bundle.module
        self.names = {id(p): n for n, p in params}
        self.params = dict(params)
        if mode is Mode.SCORE:
            if weights is None:
                raise ValueError("SCORE mode needs weights = {name: 1/(F + λ)}")
            self.weight_store = as_weight_store(weights)
            lacking = [n for n in self.params if n not in self.weight_store]
            if lacking:
                raise KeyError(f"no weights for {lacking[:3]}")
        self._rules, self._uses = self._find_rules()
        self.fisher_store = None
        if mode is Mode.FISHER:
            self.fisher_store = fisher_store if fisher_store is not None else DenseFisher(params)
        self.scores: torch.Tensor | None = None
        self.squared: dict[str, torch.Tensor] = {}
        self._pending: dict[int, torch.Tensor] = {}
        self._pending_rows: dict[int, torch.Tensor] = {}   # cross: per-row sums of tied uses
        self._handles: list = []
        self._saved_requires_grad: list[tuple[nn.Parameter, bool]] = []
        self._batch_size: int | None = None
        self._forwards = self._backwards = 0

    # ---- set-up -------------------------------------------------------------------------------
    def _find_rules(self) -> tuple[list, Counter]:
        """The hooked modules, and how many of them use each covered parameter (2 when tied)."""
        rules = []
        uses: Counter = Counter()
        for name, module in self.model.named_modules():
            rule = handler_for(module)
            if rule is None:
                continue
            own = [p for p in module.parameters(recurse=False) if id(p) in self.names]
            if not own:
                continue
            rules.append((name, module, rule))
            uses.update(id(p) for p in own)
        missing = [n for i, n in self.names.items() if i not in uses]
        if missing:
            raise NotImplementedError(
                f"no per-sample gradient rule covers {missing[:5]}: register one in "
                "bioprune.engine.influence.grad_sample.layers, or exclude them with --params")
        return rules, uses

    def covers(self, p) -> bool:
        return p is not None and id(p) in self.names

    # ---- context: freeze parameters, install hooks ---------------------------------------------
    def __enter__(self):
        for p in self.model.parameters():
            self._saved_requires_grad.append((p, p.requires_grad))
            p.requires_grad_(False)
        for name, module, rule in self._rules:
            self._install(name, module, rule)
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for p, rg in self._saved_requires_grad:
            p.requires_grad_(rg)
        self._saved_requires_grad.clear()
        self._pending.clear()
        self._pending_rows.clear()
        return False

    def _install(self, name: str, module: nn.Module, rule) -> None:
        time_first = self.bundle.is_time_first(name)
        stash: dict[str, torch.Tensor] = {}

        if rule.input_from_child:
            child = getattr(module, rule.input_from_child)
            # the child's own time-first layout is the parent's
            self._handles.append(child.register_forward_hook(
                lambda m, inp, out: stash.__setitem__("x", out.detach())))

        def forward_hook(m, inputs, output):
            if not rule.input_from_child:
                stash["x"] = inputs[0] if rule.uses_raw_input else inputs[0].detach()
            x = stash.pop("x")
            replaced = None
            if not output.requires_grad:
                # first layer (an embedding): make its output the leaf that gradients flow to
                replaced = output.detach().requires_grad_(True)
                output = replaced

            self._forwards += 1
            if output.grad_fn is None:
                output.register_hook(lambda d: self._apply(module, rule, x, d, time_first))
                return replaced
            # A pre-hook on the node that produced the output sees the gradient of the output as
            # the module returned it, even when the caller then modifies it in place (fm's
            # attention does ``q *= scaling``), which a tensor hook would miss. nn.Linear on 3-D
            # input returns a reshaping view of a 2-D product: hook the product's node.
            node, shape = output.grad_fn, output.shape
            if output._is_view():
                base = output._base
                if base.numel() != output.numel() or not base.is_contiguous() \
                        or base.grad_fn is None:
                    output = output.clone()  # an unusual view: tap a private copy instead
                    output.grad_fn.register_prehook(
                        lambda grads: self._apply(module, rule, x, grads[0], time_first))
                    return output
                node = base.grad_fn
            node.register_prehook(
                lambda grads: self._apply(module, rule, x, grads[0].reshape(shape), time_first))
            return replaced

        self._handles.append(module.register_forward_hook(forward_hook))

    # ---- backward: one rule call per layer -----------------------------------------------------
    def _apply(self, module, rule, x, d, time_first: bool) -> None:
        if time_first:
            x = x.transpose(0, 1)
            d = d.transpose(0, 1)
        R = d.shape[0]
        if self._batch_size is None:
            if R % self.copies:
                raise RuntimeError(f"{R} rows is not a whole number of {self.copies} copies")
            self._batch_size = R
            if self.mode is Mode.SCORE:
                if self.cross and self.copies < 2:
                    raise RuntimeError("the cross-term score needs at least 2 masked copies")
                self.scores = torch.zeros(R // self.copies, dtype=torch.float64, device=d.device)
        elif R != self._batch_size:
            raise RuntimeError(f"layer batch size {R} != {self._batch_size}: "
                               "wrong time_first layout?")
        self._backwards += 1
        rule.fn(module, x, d, self)

    def _join_copies(self, t: torch.Tensor) -> torch.Tensor:
        """(B·K, T, F) rows → (B, K·T, F): a sample's copies end to end along the token axis."""
        K = self.copies
        if K == 1:
            return t
        return t.reshape(t.shape[0] // K, K * t.shape[1], *t.shape[2:])

    def _sum_copies(self, g: torch.Tensor) -> torch.Tensor:
        """(B·K, ...) per-row contributions → (B, ...) per-sample sums."""
        K = self.copies
        return g if K == 1 else g.reshape(g.shape[0] // K, K, *g.shape[1:]).sum(1)

    @property
    def _rows_too(self) -> bool:
        """Whether per-row (per-copy) reductions are needed beside the per-sample ones."""
        return self.cross and self.mode is Mode.SCORE

    def _score_part(self, p, s: torch.Tensor, rows: bool = False) -> None:
        """Add a parameter's per-sample part of the scores; with ``rows``, ``s`` is per row
        (B·K,): Σ_k ‖g_k/K‖², which the cross-term estimator subtracts."""
        s = s.double()
        if self.cross:
            K = self.copies
            s = s.reshape(-1, K).sum(1) if rows else s
            s = s * (-K / (K - 1) if rows else K / (K - 1))
        self.scores += s
        g = self.group_of[id(p)]
        self.group_mass[g] = self.group_mass.get(g, 0.0) + s.sum()  # a tensor: no device sync

    def linear(self, weight, bias, x, d) -> None:
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        d = d.reshape(d.shape[0], -1, d.shape[-1])
        if self._rows_too:
            self._linear(weight, bias, x, d, rows=True)
        self._linear(weight, bias, self._join_copies(x), self._join_copies(d))

    def _linear(self, weight, bias, x, d, rows: bool = False) -> None:
        """``rows``: x, d are the rows (copies) themselves, reduced per row (cross-term)."""
        add = self._add_row if rows else self._add_sample
        w_cov, b_cov = self.covers(weight), self.covers(bias)
        fused_w = w_cov and self._uses[id(weight)] == 1 and self.mode is not Mode.PER_SAMPLE
        fused_b = b_cov and self._uses[id(bias)] == 1 and self.mode is not Mode.PER_SAMPLE
        if w_cov and not fused_w:
            add(weight, torch.bmm(d.float().transpose(1, 2), x.float()))
        if b_cov and not (fused_w and fused_b):  # the bias rides along only with a fused weight
            add(bias, d.float().sum(1))
        if not fused_w:
            return
        from bioprune.kernels.ops import fisher_accumulate, weighted_sq_norm

        bias_name = self.names[id(bias)] if fused_b else None
        if self.mode is Mode.FISHER:
            store = self.fisher_store
            with store.target(self.names[id(weight)]) as fw, \
                    (store.target(bias_name) if fused_b else contextlib.nullcontext()) as fb:
                fisher_accumulate(x, d, fw, bias_fisher=fb, backend=self.backend)
        else:
            store = self.weight_store
            with store.weights(self.names[id(weight)]) as ww, \
                    (store.weights(bias_name) if fused_b else contextlib.nullcontext()) as wb:
                s = weighted_sq_norm(x, d, ww, bias_weight=wb, backend=self.backend)
            self._score_part(weight, s, rows=rows)

    def unique_rows(self, p, idx: torch.Tensor, d: torch.Tensor, skip: int | None) -> None:
        """A table whose row ``idx[b, t]`` gets gradient ``d[b, t]``, every row at most once per
        row of the batch (positions), except ``skip`` (padding) rows, which get none."""
        K = self.copies
        if self._rows_too:
            self._unique_rows_per_row(p, idx, d, skip)
        if K > 1:
            idx_k = idx.reshape(idx.shape[0] // K, K, *idx.shape[1:])
            if bool((idx_k == idx_k[:, :1]).all()):
                # every copy uses the same rows at the same places: G_b[idx_bt] = Σ_k d_bkt
                idx, d = idx_k[:, 0], d.reshape(idx_k.shape[0], K, *d.shape[1:]).sum(1)
            else:
                from .layers import embedding_grad

                self._add_sample(p, self._sum_copies(embedding_grad(p, idx, d, skip)))
                return
        if self.mode is Mode.PER_SAMPLE or self._uses[id(p)] != 1:
            from .layers import embedding_grad

            self._add_sample(p, embedding_grad(p, idx, d, skip))
            return
        if self.mode is Mode.FISHER:
            sq = self._masked_square(idx, d, skip)
            with self.fisher_store.target(self.names[id(p)]) as f:
                f.index_add_(0, idx.reshape(-1), sq.reshape(-1, sq.shape[-1]))
        else:
            self._score_part(p, self._weighted_rows(p, idx, d, skip))

    @staticmethod
    def _masked_square(idx: torch.Tensor, d: torch.Tensor, skip) -> torch.Tensor:
        sq = d.float().square()
        return sq * idx.ne(skip).unsqueeze(-1) if skip is not None else sq

    def _weighted_rows(self, p, idx: torch.Tensor, d: torch.Tensor, skip) -> torch.Tensor:
        """Σ_t w[idx_bt] · d_bt² per row b of a unique-rows table (its score part)."""
        with self.weight_store.weights(self.names[id(p)]) as w:
            return (w[idx] * self._masked_square(idx, d, skip)).sum((1, 2))

    def _unique_rows_per_row(self, p, idx: torch.Tensor, d: torch.Tensor, skip) -> None:
        """Cross-term: the per-row (per-copy) part of ``unique_rows``."""
        if self._uses[id(p)] != 1:
            from .layers import embedding_grad

            self._add_row(p, embedding_grad(p, idx, d, skip))
            return
        self._score_part(p, self._weighted_rows(p, idx, d, skip), rows=True)

    def add(self, p, g: torch.Tensor) -> None:
        """A materialised per-row gradient contribution (B·K, *p.shape) of parameter ``p``."""
        if self._rows_too:
            self._add_row(p, g)
        self._add_sample(p, self._sum_copies(g))

    def _add_row(self, p, g: torch.Tensor) -> None:
        """Cross-term: a materialised per-row contribution (B·K, *p.shape), kept per row."""
        if self._uses[id(p)] == 1:
            self._reduce(p, g, rows=True)
        elif id(p) in self._pending_rows:
            self._pending_rows[id(p)] = self._pending_rows[id(p)] + g
        else:
            self._pending_rows[id(p)] = g

    def _add_sample(self, p, g: torch.Tensor) -> None:
        """A materialised per-sample contribution (B, *p.shape), copies already summed."""
        if self._uses[id(p)] == 1:
            self._reduce(p, g)
        elif id(p) in self._pending:
            self._pending[id(p)] = self._pending[id(p)] + g
        else:
            self._pending[id(p)] = g

    def _reduce(self, p, g: torch.Tensor, rows: bool = False) -> None:
        name = self.names[id(p)]
        sq = g.float().square()
        if rows:
            with self.weight_store.weights(name) as w:
                self._score_part(p, (sq * w).flatten(1).sum(1), rows=True)
            return
        if self.mode is Mode.FISHER:
            with self.fisher_store.target(name) as f:
                f += sq.sum(0)
        elif self.mode is Mode.SCORE:
            with self.weight_store.weights(name) as w:
                part = (sq * w).flatten(1).sum(1)
            self._score_part(p, part)
        else:
            self.squared[name] = sq

    def flush(self) -> None:
        """Call after backward: reduce parameters used by several layers, end the batch."""
        if self._backwards != self._forwards:
            raise RuntimeError(
                f"{self._forwards} hooked layers ran forward but {self._backwards} saw a gradient: "
                "a layer's output was detached or the loss does not depend on it")
        self._forwards = self._backwards = 0
        for pid, g in self._pending.items():
            self._reduce(self.params[self.names[pid]], g)
        self._pending.clear()
        for pid, g in self._pending_rows.items():
            self._reduce(self.params[self.names[pid]], g, rows=True)
        self._pending_rows.clear()
        self._batch_size = None

    @property
    def fisher(self) -> dict[str, torch.Tensor]:
        """FISHER mode: {name: Σ_b g_b²} (dense), or this rank's partitions (partitioned store)."""
        store = self.fisher_store
        return store.parts if store.partitioned else store.tensors

    def take_group_mass(self) -> dict[str, float]:
        """{group: Σ over the samples scored since the last call of that group's score part}."""
        out = {g: float(v) for g, v in self.group_mass.items()}
        self.group_mass = {}
        return out

    def take_scores(self) -> torch.Tensor:
        s, self.scores = self.scores, None
        return s
