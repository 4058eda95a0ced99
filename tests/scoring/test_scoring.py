"""Scores: invariance to batching, the Fisher identity, and the damping → 0 limit."""
import numpy as np
import pytest
import torch

from bioprune.engine.influence.grad_sample import Mode, SquaredGradCollector
from bioprune.engine.influence.passes import Scorer, fisher_pass, influence_weights
from bioprune.engine.models import build_model, trainable_parameters
from bioprune.engine.data.sequence_list import SequenceList
from reference import per_sample_grads

SEED = 5


def _setup(name, n=12):
    torch.manual_seed(1)
    bundle = build_model(name, "tiny")
    molecule = "rna" if name == "rnafm" else "protein"
    return bundle, SequenceList.random(n, (4, 60), molecule=molecule, seed=2)


@pytest.mark.parametrize("name", ["rnafm", "esmc", "esm2"])
def test_score_independent_of_batching(name):
    bundle, corpus = _setup(name)
    params = trainable_parameters(bundle.module)
    idx = np.arange(len(corpus))
    fisher = fisher_pass(bundle, corpus, idx, params, seed=SEED, max_residues=1000,
                         micro_batch_size=5, device="cpu")
    weights = influence_weights(fisher, 1e-6, "cpu")
    groupings = [
        [idx],                                  # one batch, padded to the longest
        [idx[i:i + 1] for i in idx],            # one at a time, no padding
        [idx[::-1][i:i + 3] for i in range(0, len(idx), 3)],  # other neighbours, other order
        [idx[[0, 11, 5]], idx[[1, 2, 3, 4]], idx[6:11]],
    ]
    results = []
    with Scorer(bundle, params, weights, seed=SEED, max_residues=1000, device="cpu") as scorer:
        for grouping in groupings:
            s = np.zeros(len(idx))
            for b in grouping:
                r = scorer.score_indices(corpus, b)
                s[r["index"]] = r["score"]
            results.append(s)
    assert (results[0] > 0).all()
    for s in results[1:]:
        np.testing.assert_allclose(s, results[0], rtol=1e-5)


@pytest.mark.parametrize("name", ["rnafm", "esmc", "esm2"])
def test_fisher_is_mean_of_squared_per_sample_grads(name):
    bundle, corpus = _setup(name, n=6)
    params = trainable_parameters(bundle.module)
    subset = np.array([0, 2, 3, 5])
    fisher = fisher_pass(bundle, corpus, subset, params, seed=SEED, max_residues=1000,
                         micro_batch_size=3, device="cpu")
    ref = per_sample_grads(bundle, corpus, subset, SEED)
    scale = max(ref[n].square().mean(0).norm().item() for n in ref)
    for n, _ in params:
        expect = ref[n].square().mean(0)
        assert (fisher[n] - expect).norm().item() <= 1e-5 * max(expect.norm().item(),
                                                                1e-6 * scale), n


@pytest.mark.parametrize("name", ["rnafm", "esmc", "esm2"])
def test_self_scores_of_subset_count_nonzero_fisher_entries(name):
    # mean_m Σ_j g_mj² / (F_j + λ) = Σ_j F_j / (F_j + λ) → #{j : F_j ≠ 0} as λ → 0
    bundle, corpus = _setup(name, n=10)
    params = trainable_parameters(bundle.module)
    subset = np.arange(10)
    fisher = fisher_pass(bundle, corpus, subset, params, seed=SEED, max_residues=1000,
                         micro_batch_size=4, device="cpu")
    nonzero = sum(int((f != 0).sum()) for f in fisher.values())
    total = sum(p.numel() for _, p in params)
    # rows of unused vocabulary / positions are exactly zero; ESM-2's embedding is its output
    # projection too (every row gets a gradient through the softmax) and it has no positions
    assert 0 < nonzero < total or (name == "esm2" and nonzero == total)
    weights = influence_weights(fisher, 1e-30, "cpu")
    with Scorer(bundle, params, weights, seed=SEED, max_residues=1000, device="cpu") as scorer:
        scores = np.concatenate([scorer.score_indices(corpus, b)["score"]
                                 for b in (subset[:6], subset[6:])])
    assert abs(scores.mean() - nonzero) <= 1e-3 * nonzero


def test_collector_rejects_uncovered_parameter():
    bundle, _ = _setup("rnafm")
    extra = torch.nn.Parameter(torch.zeros(3))
    bundle.module.register_parameter("stray", extra)
    with pytest.raises(NotImplementedError, match="stray"):
        SquaredGradCollector(bundle, trainable_parameters(bundle.module), Mode.FISHER)
