"""Squared per-sample gradients from the hooks against torch.func, for every parameter."""
import numpy as np
import pytest
import torch

from bioprune.engine.data.batching import make_batch
from bioprune.engine.influence.grad_sample import Mode, SquaredGradCollector
from bioprune.engine.influence.passes import _backward_pass
from bioprune.engine.models import build_model, trainable_parameters
from bioprune.engine.data.sequence_list import SequenceList
from reference import per_sample_grads

SEED = 3


def _setup(name):
    torch.manual_seed(0)
    bundle = build_model(name, "tiny")
    # random (not initial) LayerNorm/bias values so every parameter has a generic gradient
    with torch.no_grad():
        for p in bundle.module.parameters():
            p.add_(0.05 * torch.randn_like(p))
    molecule = "rna" if name == "rnafm" else "protein"
    corpus = SequenceList.random(7, (5, 40), molecule=molecule, seed=1)
    return bundle, corpus


def _close(a, b, scale, rtol=1e-5):
    """||a - b|| <= rtol·||b||, with a floor at rtol·1e-6 of the whole model's scale: the key
    projection bias has an exactly-zero true gradient (softmax ignores a shift shared by all keys),
    so both sides are round-off there and only an absolute bound is meaningful."""
    return (a - b).norm().item() <= rtol * max(b.norm().item(), 1e-6 * scale)


@pytest.mark.parametrize("name", ["rnafm", "esmc", "esm2"])
@pytest.mark.parametrize("order", [[0, 1, 2, 3, 4, 5, 6], [6, 2, 4], [5, 0]])
def test_squared_per_sample_grads_match_torch_func(name, order):
    bundle, corpus = _setup(name)
    params = trainable_parameters(bundle.module)
    ref = per_sample_grads(bundle, corpus, order, SEED)
    batch = make_batch(corpus, order, bundle, SEED)
    assert (batch.tokens == bundle.pad_id).any(), "the batch must be padded to a common length"
    with SquaredGradCollector(bundle, params, Mode.PER_SAMPLE) as col:
        _backward_pass(bundle, batch, col)
        squared = dict(col.squared)
    assert set(squared) == {n for n, _ in params}
    scale = max(ref[n].square().norm().item() for n in ref)
    for n, _ in params:
        assert squared[n].shape == ref[n].shape, n
        assert _close(squared[n], ref[n].square(), scale), n


@pytest.mark.parametrize("name", ["rnafm", "esmc", "esm2"])
def test_fisher_and_scores_match_torch_func(name):
    bundle, corpus = _setup(name)
    params = trainable_parameters(bundle.module)
    idx = list(range(len(corpus)))
    ref = per_sample_grads(bundle, corpus, idx, SEED)
    with SquaredGradCollector(bundle, params, Mode.FISHER) as col:
        for part in ([0, 1, 2], [3, 4, 5, 6]):
            _backward_pass(bundle, make_batch(corpus, part, bundle, SEED), col)
        fisher = col.fisher
    scale = max(ref[n].square().sum(0).norm().item() for n in ref)
    for n, _ in params:
        assert _close(fisher[n], ref[n].square().sum(0), scale), n
    weights = {n: 1.0 / (fisher[n] / len(idx) + 1e-3) for n, _ in params}
    with SquaredGradCollector(bundle, params, Mode.SCORE, weights=weights) as col:
        _backward_pass(bundle, make_batch(corpus, idx, bundle, SEED), col)
        scores = col.take_scores()
    expect = sum((ref[n].square() * weights[n]).flatten(1).sum(1).double() for n, _ in params)
    np.testing.assert_allclose(scores.numpy(), expect.numpy(), rtol=1e-5)


def test_parameter_pattern_restricts_coverage():
    bundle, corpus = _setup("rnafm")
    params = trainable_parameters(bundle.module, r"fc1\.weight$")
    assert len(params) == 2
    with SquaredGradCollector(bundle, params, Mode.PER_SAMPLE) as col:
        _backward_pass(bundle, make_batch(corpus, [0, 1], bundle, SEED), col)
        assert set(col.squared) == {n for n, _ in params}
    # every parameter is trainable again afterwards
    assert all(p.requires_grad for n, p in bundle.module.named_parameters()
               if "contact_head" not in n)
