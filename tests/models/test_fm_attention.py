"""SDPA attention for fm (models.fm_attention) against fm's own explicit attention path: the
same logits and the same gradient for every parameter, over shapes, padding, dtypes and modes;
the projection modules are still called (their hooks give per-sample gradients)."""
import copy

import pytest
import torch

from bioprune.engine.models import build_model
from bioprune.engine.models.fm_attention import SdpaMultiheadAttention, use_fm_explicit


def _pair(seed: int = 0):
    """(fm's explicit path, bioprune's SDPA path): one tiny RNA-FM with random weights, twice."""
    torch.manual_seed(seed)
    sdpa = build_model("rnafm", "tiny").module
    fm_path = copy.deepcopy(sdpa)
    assert use_fm_explicit(fm_path) == len(sdpa.net.layers)
    assert not any(isinstance(m, SdpaMultiheadAttention) for m in fm_path.modules())
    return fm_path, sdpa


def _tokens(batch: int, length: int, padded: bool, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(4, 24, (batch, length), generator=g)
    tokens[:, 0] = 0                                  # <cls>
    if padded:
        for i in range(1, batch):                     # row 0 keeps the full length
            n = int(torch.randint(2, length, (1,), generator=g))
            tokens[i, n:] = 1                         # <pad>
    return tokens


def _run(module, tokens, dtype):
    module.zero_grad()
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        logits = module(tokens)
    logits.float().square().mean().backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return logits.detach().float(), grads


@pytest.mark.parametrize("batch,length,padded", [(1, 3, False), (3, 17, True), (4, 64, False),
                                                 (2, 300, True)])
@pytest.mark.parametrize("train", [False, True])
def test_sdpa_matches_fm_explicit_path(batch, length, padded, train):
    fm_path, sdpa = _pair()
    fm_path.train(train)
    sdpa.train(train)
    tokens = _tokens(batch, length, padded)
    want, want_g = _run(fm_path, tokens, torch.float32)
    got, got_g = _run(sdpa, tokens, torch.float32)
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    assert want_g.keys() == got_g.keys() and len(want_g) > 0
    # k_proj.bias adds the same logit to every key of a query, which softmax ignores: its exact
    # gradient is zero, so both paths hold rounding noise there; compare it on the scale of the
    # layer's k_proj.weight gradient instead of its own.
    for name, w in want_g.items():
        ref = want_g[name.replace("k_proj.bias", "k_proj.weight")].abs().max()
        assert (got_g[name] - w).abs().max() <= 1e-5 * ref.clamp_min(1e-12), name


@pytest.mark.parametrize("batch,length,padded", [(3, 17, True), (2, 300, True)])
def test_sdpa_bf16_as_close_to_fp32_as_fm(batch, length, padded):
    """Under bf16 autocast both paths round differently; SDPA's error against the fp32 result
    is no larger than fm's own (in norm, per output and per parameter gradient)."""
    fm_path, sdpa = _pair()
    tokens = _tokens(batch, length, padded)
    exact, exact_g = _run(fm_path, tokens, torch.float32)
    fm_y, fm_g = _run(fm_path, tokens, torch.bfloat16)
    sd_y, sd_g = _run(sdpa, tokens, torch.bfloat16)

    def err(a, b):
        return float((a - b).norm() / b.norm().clamp_min(1e-12))

    assert err(sd_y, exact) <= 2 * err(fm_y, exact) + 1e-3
    for name in exact_g:
        if name.endswith("k_proj.bias"):      # exactly zero in exact arithmetic (see above)
            continue
        assert err(sd_g[name], exact_g[name]) <= 2 * err(fm_g[name], exact_g[name]) + 1e-3, name


def test_padding_does_not_leak():
    """A sequence's logits are the same alone and in a padded batch beside a longer one."""
    _, sdpa = _pair()
    sdpa.eval()
    tokens = _tokens(2, 40, padded=True, seed=3)
    n = int((tokens[1] != 1).sum())
    with torch.no_grad():
        both = sdpa(tokens)
        alone = sdpa(tokens[1:, :n])
    torch.testing.assert_close(both[1, :n], alone[0], rtol=1e-5, atol=1e-5)


def test_projection_modules_are_called():
    _, sdpa = _pair()
    calls = []
    for name, m in sdpa.named_modules():
        if name.rsplit(".", 1)[-1] in ("q_proj", "k_proj", "v_proj", "out_proj"):
            m.register_forward_hook(lambda mod, i, o, name=name: calls.append(name))
    sdpa(_tokens(2, 9, padded=True))
    layers = len(sdpa.net.layers)
    assert len(calls) == 4 * layers and len(set(calls)) == 4 * layers


def test_head_weights_fall_back_to_fm():
    """Contacts need the attention weights: those calls run fm's own path, unchanged."""
    fm_path, sdpa = _pair()
    tokens = _tokens(2, 12, padded=True)
    with torch.no_grad():
        want = fm_path.eval().net(tokens, return_contacts=True)
        got = sdpa.eval().net(tokens, return_contacts=True)
    torch.testing.assert_close(got["attentions"], want["attentions"])
    torch.testing.assert_close(got["logits"], want["logits"])
