"""Scores that mean something: the expected loss over several masks, exclusion of coordinates
D_sub cannot estimate, relative damping, zero-gradient parameters, diagnostics."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from bioprune.engine.data.batching import (COVER_PARTS, IGNORE, MaskPlan, make_batch,
                                           mask_sequence, n_masked, tokenize_residues)
from bioprune.engine.data.sequence_list import SequenceList
from bioprune.engine.influence import damping as dmp
from bioprune.engine.influence.diagnostics import GROUPS, contributions, parameter_groups
from bioprune.engine.influence.grad_sample import Mode, SquaredGradCollector
from bioprune.engine.influence.passes import Scorer, _backward_pass, fisher_pass
from bioprune.engine.influence.settings import ScoreSettings, mask_plan
from bioprune.engine.models import build_model, trainable_parameters
from reference import expected_per_sample_grads, per_copy_grads

SEED = 4
PLANS = [MaskPlan(draws=3, seed=9), MaskPlan(covers=1)]
DEFAULT_PLAN = mask_plan(ScoreSettings(seed=SEED))   # what `score.py` uses without mask flags


def _setup(name, n=5, lengths=(5, 30)):
    torch.manual_seed(0)
    bundle = build_model(name, "tiny")
    with torch.no_grad():   # generic values: every parameter gets a generic gradient
        for p in bundle.module.parameters():
            p.add_(0.05 * torch.randn_like(p))
    molecule = "rna" if name == "rnafm" else "protein"
    return bundle, SequenceList.random(n, lengths, molecule=molecule, seed=3)


def _close(a, b, scale, rtol=1e-5):
    return (a - b).norm().item() <= rtol * max(b.norm().item(), 1e-6 * scale)


# ---- masks -------------------------------------------------------------------------------------

def test_masks_are_pure_functions_of_seed_index_and_k():
    bundle, corpus = _setup("rnafm", n=6, lengths=(3, 40))
    for plan in PLANS + [MaskPlan(covers=2, seed=1)]:
        K = plan.copies
        whole = make_batch(corpus, [0, 1, 2, 3, 4, 5], bundle, SEED, masks=plan)
        other = make_batch(corpus, [5, 2], bundle, SEED, masks=plan)
        assert whole.copies == other.copies == K and whole.tokens.shape[0] == 6 * K
        for r, i in enumerate([5, 2]):
            L = int(corpus.lengths[i]) + 2
            for k in range(K):
                assert torch.equal(other.tokens[r * K + k, :L], whole.tokens[i * K + k, :L])
                assert torch.equal(other.labels[r * K + k, :L], whole.labels[i * K + k, :L])
    # the mask seed changes the masks, the run seed (crops) does not decide them
    a = make_batch(corpus, [1], bundle, SEED, masks=MaskPlan(draws=2, seed=1))
    b = make_batch(corpus, [1], bundle, SEED, masks=MaskPlan(draws=2, seed=2))
    assert not torch.equal(a.labels, b.labels)
    # one random mask, mask 0, is the single mask of before (and of training)
    legacy = make_batch(corpus, [0, 3], bundle, SEED)
    k0 = make_batch(corpus, [0, 3], bundle, SEED, masks=MaskPlan(draws=4))
    assert torch.equal(legacy.labels, k0.labels[::4]) and torch.equal(legacy.tokens, k0.tokens[::4])


def test_a_cover_masks_every_position_once():
    bundle, corpus = _setup("rnafm", n=8, lengths=(3, 60))
    for i in range(len(corpus)):
        for rate, parts in ((0.15, COVER_PARTS), (0.25, 4), (0.5, 2)):
            plan = MaskPlan(covers=1, seed=5, rate=rate)
            b = make_batch(corpus, [i], bundle, SEED, masks=plan)
            masked = (b.labels != IGNORE).int()            # (P, L)
            L = int(corpus.lengths[i])
            assert b.copies == plan.copies == parts
            assert (masked.sum(1) >= 1).all()              # no copy without loss
            hits = masked.sum(0)[1:L + 1]
            if L >= parts:
                assert (hits == 1).all()                   # a partition of the residues
                assert abs(masked.sum(1).float().mean().item() - L / parts) < 1
            else:
                assert (hits >= 1).all()                   # every residue at least once


def test_mask_only_hides_every_chosen_residue_behind_the_mask_token():
    """The default score's corruption: the same chosen positions as 80/10/10, all the mask token;
    80/10/10 keeps or replaces some of them (the noise mask-only removes)."""
    bundle, corpus = _setup("rnafm", n=6, lengths=(40, 80))
    kinds = set()
    for plan in (MaskPlan(covers=1, rate=0.25), MaskPlan(draws=2)):
        only = make_batch(corpus, range(6), bundle, SEED, masks=replace(plan, mask_only=True))
        bert = make_batch(corpus, range(6), bundle, SEED, masks=plan)
        assert torch.equal(only.labels, bert.labels)       # the same positions and targets
        chosen = only.labels != IGNORE
        assert (only.tokens[chosen] == bundle.mask_id).all()
        assert torch.equal(only.tokens[~chosen], bert.tokens[~chosen])
        kinds |= {"kept" if (bert.tokens[chosen] == bert.labels[chosen]).any() else "",
                  "random" if ((bert.tokens[chosen] != bundle.mask_id)
                               & (bert.tokens[chosen] != bert.labels[chosen])).any() else ""}
    assert {"kept", "random"} <= kinds


def test_random_masks_keep_the_15_percent_rule():
    bundle, _ = _setup("rnafm")
    toks = tokenize_residues(np.frombuffer(b"ACGU" * 25, dtype=np.uint8), bundle)
    for k in range(4):
        inp, lab = mask_sequence(3, 7, toks, bundle, k)
        assert (lab != IGNORE).sum() == n_masked(100) == 15


# ---- per-sample gradients of the expected loss --------------------------------------------------

@pytest.mark.parametrize("name", ["rnafm", "esmc"])
@pytest.mark.parametrize("plan", PLANS + [MaskPlan(unmasked=True), MaskPlan(draws=2, rate=0.3),
                                          DEFAULT_PLAN],
                         ids=["3draws", "cover", "unmasked", "2draws-rate0.3", "default"])
def test_multi_mask_per_sample_grads_match_torch_func(name, plan):
    bundle, corpus = _setup(name, n=3, lengths=(4, 20))
    params = trainable_parameters(bundle.module)
    order = [2, 0, 1]
    ref = expected_per_sample_grads(bundle, corpus, order, SEED, plan)
    batch = make_batch(corpus, order, bundle, SEED, masks=plan)
    assert (batch.tokens == bundle.pad_id).any()
    with SquaredGradCollector(bundle, params, Mode.PER_SAMPLE) as col:
        _backward_pass(bundle, batch, col)
        squared = dict(col.squared)
    scale = max(ref[n].square().norm().item() for n in ref)
    assert set(squared) == {n for n, _ in params}
    for n, _ in params:
        assert squared[n].shape == ref[n].shape, n
        assert _close(squared[n], ref[n].square(), scale), n
    # the fused paths (Fisher and weighted scores) agree with the same reference
    with SquaredGradCollector(bundle, params, Mode.FISHER) as col:
        _backward_pass(bundle, make_batch(corpus, [0], bundle, SEED, masks=plan), col)
        _backward_pass(bundle, make_batch(corpus, [1, 2], bundle, SEED, masks=plan), col)
        fisher = col.fisher
    for n, _ in params:
        assert _close(fisher[n], ref[n].square().sum(0), scale), n
    weights = {n: torch.rand_like(p, dtype=torch.float32) for n, p in params}
    with SquaredGradCollector(bundle, params, Mode.SCORE, weights=weights) as col:
        _backward_pass(bundle, batch, col)
        scores = col.take_scores()
    expect = sum((ref[n].square() * weights[n]).flatten(1).sum(1).double() for n, _ in params)
    np.testing.assert_allclose(scores.numpy(), expect.numpy(), rtol=1e-5)


@pytest.mark.parametrize("name", ["rnafm", "esmc"])
@pytest.mark.parametrize("plan", [MaskPlan(draws=3, seed=9, estimator="cross"),
                                  MaskPlan(covers=1, estimator="cross")], ids=["3draws", "cover"])
def test_cross_term_scores_match_torch_func(name, plan):
    """The cross-term estimator Σ_{k≠l} ⟨g_k, g_l⟩_W / (K(K−1)) from each copy's own gradient,
    every copy run alone through torch.func, equals the Scorer's (fused kernels, tied
    embeddings, learned positions, per-row reductions beside the joined ones)."""
    bundle, corpus = _setup(name, n=3, lengths=(4, 20))
    params = trainable_parameters(bundle.module)
    order = [2, 0, 1]
    ref = per_copy_grads(bundle, corpus, order, SEED, plan)
    K = plan.copies
    weights = {n: torch.rand_like(p, dtype=torch.float32) for n, p in params}
    expect = torch.zeros(len(order), dtype=torch.float64)
    for n, _ in params:
        g = ref[n].double().flatten(2)                      # (B, K, P)
        w = weights[n].double().flatten()
        total = (g.sum(1).square() * w).sum(1)              # |Σ_k g_k|²_W
        own = (g.square() * w).sum((1, 2))                  # Σ_k |g_k|²_W
        expect += (total - own) / (K * (K - 1))
    scorer = Scorer(bundle, params, weights, seed=SEED, max_residues=10_000, device="cpu",
                    masks=plan)
    with scorer:
        got = scorer.score_indices(corpus, order)
    by_index = dict(zip(got["index"].tolist(), got["score"].tolist()))
    np.testing.assert_allclose([by_index[i] for i in order], expect.numpy(), rtol=1e-4,
                               atol=1e-6 * float(expect.abs().max()))
    # and it is not the mean estimator: those differ by the noise term Σ_k |g_k|² / K²
    mean = Scorer(bundle, params, weights, seed=SEED, max_residues=10_000, device="cpu",
                  masks=MaskPlan(draws=plan.draws, covers=plan.covers, seed=plan.seed))
    with mean:
        plain = mean.score_indices(corpus, order)["score"]
    assert not np.allclose(plain, got["score"], rtol=1e-3)


def test_unmasked_and_rate_plans():
    bundle, corpus = _setup("rnafm", n=4, lengths=(10, 40))
    u = make_batch(corpus, [0, 1], bundle, SEED, masks=MaskPlan(unmasked=True))
    assert (u.labels != IGNORE).sum() == corpus.lengths[:2].sum()
    assert not (u.tokens == bundle.mask_id).any()
    r = make_batch(corpus, [2], bundle, SEED, masks=MaskPlan(draws=1, rate=0.3))
    assert (r.labels != IGNORE).sum() == n_masked(int(corpus.lengths[2]), 0.3)
    for bad in (dict(unmasked=True, draws=2), dict(unmasked=True, rate=0.3),
                dict(draws=1, rate=1.0), dict(covers=1, rate=0)):
        with pytest.raises(ValueError):
            MaskPlan(**bad)


def test_cross_term_needs_two_copies():
    with pytest.raises(ValueError, match="at least 2"):
        MaskPlan(draws=1, estimator="cross")
    with pytest.raises(ValueError, match="estimator"):
        MaskPlan(draws=2, estimator="median")


# ---- identities ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["rnafm", "esmc"])
def test_self_scores_count_included_coordinates_with_several_masks(name):
    # D_sub = corpus, λ → 0: mean_m Σ_j g_mj² / (F_j + λ) = #{covered j : F_j > threshold}
    bundle, corpus = _setup(name, n=6, lengths=(4, 24))
    params, zero = dmp.covered_parameters(bundle.module, trainable_parameters(bundle.module))
    plan = MaskPlan(draws=2, seed=3)
    idx = np.arange(len(corpus))
    fisher = fisher_pass(bundle, corpus, idx, params, seed=SEED, max_residues=1000,
                         micro_batch_size=4, device="cpu", masks=plan)
    nonzero = sum(int((f != 0).sum()) for f in fisher.values())
    for d in (dmp.Damping("absolute", value=1e-30, exclude_below=0.0),
              dmp.Damping("absolute", value=1e-30, exclude_below=1e-3)):
        info = dmp.resolve(fisher, d)
        if d.exclude_below == 0:
            assert info["included"] == nonzero
        else:
            assert 0 < info["included"] < nonzero and info["excluded"] > 0
        w = dmp.influence_weights(fisher, d, "cpu")
        with Scorer(bundle, params, w, seed=SEED, max_residues=1000, device="cpu",
                    masks=plan) as sc:
            s = np.concatenate([sc.score_indices(corpus, b)["score"] for b in (idx[:2], idx[2:])])
        assert abs(s.mean() - info["included"]) <= 1e-3 * info["included"]


def test_scores_with_covers_do_not_depend_on_batching():
    bundle, corpus = _setup("esmc", n=7, lengths=(3, 30))
    params = trainable_parameters(bundle.module)
    plan = MaskPlan(covers=1, seed=2)
    idx = np.arange(len(corpus))
    fisher = fisher_pass(bundle, corpus, idx, params, seed=SEED, max_residues=1000,
                         micro_batch_size=3, device="cpu", masks=plan)
    w = dmp.influence_weights(fisher, dmp.Damping(), "cpu")
    out = []
    with Scorer(bundle, params, w, seed=SEED, max_residues=1000, device="cpu", masks=plan) as sc:
        for grouping in ([idx], [idx[i:i + 1] for i in idx], [idx[[6, 0, 3]], idx[[1, 2, 4, 5]]]):
            s = np.zeros(len(idx))
            for b in grouping:
                r = sc.score_indices(corpus, b)
                s[r["index"]] = r["score"]
            out.append(s)
    for s in out[1:]:
        np.testing.assert_allclose(s, out[0], rtol=1e-5)


# ---- coverage, exclusion, damping ---------------------------------------------------------------

def test_key_projection_bias_is_not_covered():
    bundle, corpus = _setup("rnafm")
    params, zero = dmp.covered_parameters(bundle.module, trainable_parameters(bundle.module))
    assert zero == sorted(f"net.layers.{i}.self_attn.k_proj.bias" for i in range(2))
    assert not any(n in zero for n, _ in params)
    esmc, _ = _setup("esmc")
    assert dmp.zero_gradient_parameters(esmc.module, trainable_parameters(esmc.module)) == []


def test_positions_beyond_dsub_are_excluded_and_cannot_dominate():
    torch.manual_seed(0)
    bundle = build_model("rnafm", "tiny")
    short = SequenceList.random(6, (6, 12), seed=1)
    corpus = SequenceList([short.sequence(i) for i in range(6)] + ["ACGU" * 20, "GCAU" * 25])
    params, _ = dmp.covered_parameters(bundle.module, trainable_parameters(bundle.module))
    plan = MaskPlan(covers=1)
    fisher = fisher_pass(bundle, corpus, np.arange(6), params, seed=SEED, max_residues=1000,
                         micro_batch_size=6, device="cpu", masks=plan)
    pos = fisher["net.embed_positions.weight"]
    assert (pos[20:] == 0).all()    # rows D_sub never reaches
    info = dmp.resolve(fisher, dmp.Damping())
    assert info["excluded"] >= pos[20:].numel() and info["mode"] == "relative"
    assert info["lambda"] == pytest.approx(dmp.DEFAULT_ALPHA * dmp.fisher_mean(fisher))
    groups = parameter_groups(bundle.module, params)
    for d, bounded in ((dmp.Damping(), True), (1e-8, False)):   # new default / the old way
        w = dmp.influence_weights(fisher, d, "cpu")
        with Scorer(bundle, params, w, seed=SEED, max_residues=1000, device="cpu", masks=plan,
                    groups=groups) as sc:
            sc.score_indices(corpus, np.arange(8))
            share = contributions(sc.take_group_mass())
        assert sum(share.values()) == pytest.approx(1.0)
        if bounded:
            assert share["positional_embeddings"] < 0.5
        else:
            # the old artefact: positions D_sub never reached dominate under a tiny absolute λ
            assert share["positional_embeddings"] > 0.9


def test_damping_record_and_modes():
    f = {"a": torch.tensor([0.0, 1e-20, 1.0, 3.0]), "b": torch.tensor([[2.0, 2.0]])}
    mean = 8.0 / 6
    rel = dmp.resolve(f, dmp.Damping("relative", alpha=0.5))
    assert rel["lambda"] == pytest.approx(0.5 * mean) and rel["alpha"] == 0.5
    assert rel["included"] == 4 and rel["excluded"] == 2
    ab = dmp.resolve(f, dmp.Damping("absolute", value=1e-8, exclude_below=None))
    assert ab["lambda"] == 1e-8 and ab["alpha"] is None and ab["excluded"] == 0
    w = dmp.influence_weights(f, dmp.Damping("relative", alpha=0.5), "cpu")
    assert w["a"][0] == 0 and w["a"][1] == 0 and w["a"][2] == pytest.approx(1 / (1 + 0.5 * mean))
    with pytest.raises(ValueError):
        dmp.Damping("relative", alpha=0)


def test_parameter_groups_name_every_group_of_rnafm():
    bundle, _ = _setup("rnafm")
    params = trainable_parameters(bundle.module)
    g = parameter_groups(bundle.module, params)
    assert g["net.embed_tokens.weight"] == "token_embeddings"
    assert g["net.embed_positions.weight"] == "positional_embeddings"
    assert g["net.layers.0.self_attn.q_proj.weight"] == "attention_q"
    assert g["net.layers.1.self_attn.out_proj.bias"] == "attention_out"
    assert g["net.layers.0.fc2.weight"] == "feed_forward"
    assert g["net.layers.0.final_layer_norm.bias"] == "layer_norms"
    assert g["net.lm_head.dense.weight"] == "lm_head"
    assert set(g.values()) <= set(GROUPS) and "other" not in g.values()
    esmc, _ = _setup("esmc")
    ge = parameter_groups(esmc.module, trainable_parameters(esmc.module))
    assert "other" not in ge.values()


def test_a_run_never_resumes_under_another_mask_plan(tmp_path):
    """The resolved mask plan is part of the run identity: the same flags under a default that
    changed between versions (here the old 7-mask 80/10/10 cover) are refused, masks named."""
    from bioprune.engine.influence.checks import begin_scoring
    from bioprune.engine.influence.settings import RESULT_KEYS
    from bioprune.engine.runtime import lock
    from bioprune.engine.runtime.errors import UsageError

    fa = tmp_path / "c.fasta"
    fa.write_text(">a\nACGUACGU\n>b\nGGAUCCA\n")
    s = ScoreSettings(data=[str(fa)], out=str(tmp_path / "run"))
    plan = mask_plan(s).describe()
    try:
        assert begin_scoring(s, RESULT_KEYS, plan) is None          # a new run: opened
    finally:
        lock.release_all()
    (tmp_path / "run" / "scores").mkdir()    # the run has produced something: its identity binds
    old = {k: v for k, v in plan.items() if k != "mask_only"} | {"copies": 7, "rate": 0.15}
    try:
        with pytest.raises(UsageError, match="masks"):
            begin_scoring(s, RESULT_KEYS, old)
        assert begin_scoring(s, RESULT_KEYS, plan) is None          # the same plan resumes
    finally:
        lock.release_all()
