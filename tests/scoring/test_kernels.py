"""Tests of bioprune.kernels: fused Triton kernels and the PyTorch path against float64 truth.

The Triton kernels run on the CPU through the Triton interpreter, so shapes are small and
deliberately not multiples of the interpreter's tiles (32 × 32, T chunks of 16).
"""
import os

# Must happen before triton (or bioprune.kernels.triton_sq) is first imported in this process;
# tests/conftest.py does the same for the whole session.
os.environ.setdefault("TRITON_INTERPRET", "1")

import subprocess
import sys

import pytest
import torch

import bioprune.kernels.ops as K
from bioprune.kernels.ops import fisher_accumulate, weighted_sq_norm
from bioprune.kernels import reference as R


def _triton_device() -> str:
    from bioprune.kernels import triton_sq

    if triton_sq.INTERPRETED:
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    pytest.fail("bioprune.kernels.triton_sq was imported without TRITON_INTERPRET=1 and there "
                "is no GPU: set TRITON_INTERPRET=1 before triton is first imported")


def _device(backend: str) -> str:
    return _triton_device() if backend == "triton" else "cpu"


LOW_TOL = 1e-2  # bf16 / fp16 inputs
FP32_TOL = 1e-5

# name, B, T, I, O, padded, non-contiguous
CASES = [
    ("ragged", 3, 45, 23, 37, True, False),
    ("b1_t1", 1, 1, 17, 9, False, False),
    ("io_tile_multiple", 2, 33, 64, 32, False, True),
    ("odd_batch", 5, 16, 40, 70, True, True),
]


def make_inputs(B, T, I, O, dtype, padded=False, noncontig=False, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    if noncontig:
        # batch not outermost in x; d stored (B, O, T) so T, not O, is its unit-stride dim
        x = torch.randn(T, B, I, generator=g).to(dtype).transpose(0, 1)
        d = torch.randn(B, O, T, generator=g).to(dtype).transpose(1, 2)
    else:
        x = torch.randn(B, T, I, generator=g).to(dtype)
        d = torch.randn(B, T, O, generator=g).to(dtype)
    if padded:
        lengths = torch.randint(1, T + 1, (B,), generator=g)
        lengths[0] = max(1, T - 7)
        for b, n in enumerate(lengths.tolist()):
            d[b, n:] = 0
            x[b, n:] = 1e3  # whatever sits at padded positions must not matter
    return x.to(device), d.to(device)


def exact(x, d):
    """Explicit per-sample weight and bias gradients in float64."""
    xd, dd = x.double(), d.double()
    return torch.einsum("bto,bti->boi", dd, xd), dd.sum(1)


def make_params(O, I, noncontig=False, device="cpu", seed=1):
    g = torch.Generator().manual_seed(seed)
    f0 = torch.rand(O, I, generator=g)  # non-zero start: the update must be +=
    bf0 = torch.rand(O, generator=g)
    w = torch.rand(O, I, generator=g) + 0.1
    bw = torch.rand(O, generator=g) + 0.1
    if noncontig:
        f0 = f0.t().contiguous().t()           # column-major
        w = torch.cat([w, w], 1)[:, ::2]        # column stride 2
        bw = torch.stack([bw, bw], 1)[:, 0]     # stride 2
    return [t.to(device) for t in (f0, bf0, w, bw)]


def assert_close_normwise(got, want, tol):
    got = got.double().cpu()
    want = want.double().cpu()
    err = (got - want).abs().max().item()
    scale = want.abs().max().item()
    assert err <= tol * scale, f"max abs error {err:.3e} > {tol:g} × {scale:.3e}"


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16],
                         ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_matches_float64_per_sample_gradients(backend, case, dtype, bias):
    _, B, T, I, O, padded, noncontig = case
    dev = _device(backend)
    x, d = make_inputs(B, T, I, O, dtype, padded, noncontig, dev)
    if noncontig:
        assert not x.is_contiguous() and not d.is_contiguous()
    G, gb = exact(x.cpu(), d.cpu())
    f0, bf0, w, bw = make_params(O, I, noncontig, dev)
    tol = FP32_TOL if dtype == torch.float32 else LOW_TOL

    fisher = f0.clone()  # clone keeps the (column-major) strides
    bias_fisher = bf0.clone() if bias else None
    assert fisher.is_contiguous() != noncontig
    ret = fisher_accumulate(x, d, fisher, bias_fisher, backend=backend)
    assert ret is fisher and fisher.dtype == torch.float32
    assert_close_normwise(fisher - f0, (G * G).sum(0), tol)
    if bias:
        assert_close_normwise(bias_fisher - bf0, (gb * gb).sum(0), tol)

    s = weighted_sq_norm(x, d, w, bw if bias else None, backend=backend)
    assert s.shape == (B,) and s.dtype == torch.float32 and s.device.type == dev
    want = (w.double().cpu() * G * G).sum((1, 2))
    if bias:
        want = want + (bw.double().cpu() * gb * gb).sum(1)
    rel = ((s.double().cpu() - want).abs() / want).max().item()
    assert rel <= tol, f"score relative error {rel:.3e}"


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("B, T, I, O", [(1, 2048, 40, 48), (2, 3, 6144, 40), (1, 2, 70, 6144)],
                         ids=["T2048", "I6144", "O6144"])
def test_real_model_dimensions(backend, B, T, I, O, monkeypatch):
    # the long dimensions of real layers (T up to 2048, I and O up to 6144), kept cheap
    dev = _device(backend)
    if backend == "triton" and dev == "cpu":
        # the interpreter pays per program: use big tiles (still not dividing every dim)
        from bioprune.kernels import triton_sq
        monkeypatch.setattr(triton_sq, "INTERPRET_CONFIG",
                            dict(BLOCK_O=256, BLOCK_I=512, BLOCK_T=128))
    x, d = make_inputs(B, T, I, O, torch.bfloat16, padded=True, device=dev)
    G, gb = exact(x.cpu(), d.cpu())
    f, bf = torch.zeros(O, I, device=dev), torch.zeros(O, device=dev)
    fisher_accumulate(x, d, f, bf, backend=backend)
    assert_close_normwise(f, (G * G).sum(0), FP32_TOL)
    assert_close_normwise(bf, (gb * gb).sum(0), FP32_TOL)
    w = torch.rand(O, I, device=dev) + 0.1
    s = weighted_sq_norm(x, d, w, backend=backend)
    torch.testing.assert_close(s.double().cpu(), (w.double().cpu() * G * G).sum((1, 2)),
                               rtol=FP32_TOL, atol=0)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_padding_rows_contribute_nothing(backend):
    dev = _device(backend)
    B, T, I, O = 2, 21, 19, 13
    x, d = make_inputs(B, T, I, O, torch.float32, device=dev)
    # Pad every sample to T + 30 with zero gradients and junk activations.
    xp = torch.cat([x, torch.full((B, 30, I), 7.0, device=dev)], 1)
    dp = torch.cat([d, torch.zeros(B, 30, O, device=dev)], 1)
    w, bw = torch.rand(O, I, device=dev), torch.rand(O, device=dev)
    s = weighted_sq_norm(x, d, w, bw, backend=backend)
    sp = weighted_sq_norm(xp, dp, w, bw, backend=backend)
    if backend == "triton":
        assert torch.equal(s, sp)
    else:
        torch.testing.assert_close(s, sp, rtol=1e-6, atol=0)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_bitwise_reproducible(backend):
    dev = _device(backend)
    B, T, I, O = 3, 37, 29, 41
    x, d = make_inputs(B, T, I, O, torch.bfloat16, padded=True, device=dev)
    f0, bf0, w, bw = make_params(O, I, device=dev)
    outs = []
    for _ in range(2):
        f, bf = f0.clone(), bf0.clone()
        fisher_accumulate(x, d, f, bf, backend=backend)
        outs.append((f, bf, weighted_sq_norm(x, d, w, bw, backend=backend)))
    for a, b in zip(*outs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_score_independent_of_batch_neighbours(backend):
    dev = _device(backend)
    I, O = 23, 35
    w, bw = torch.rand(O, I, device=dev) + 0.1, torch.rand(O, device=dev) + 0.1
    x1, d1 = make_inputs(3, 40, I, O, torch.float32, device=dev, seed=10)
    # The same sample 0 at position 1 of a bigger batch with other neighbours and padded
    # to a longer T (zero gradients, junk activations at the padding).
    x2, d2 = make_inputs(4, 57, I, O, torch.float32, device=dev, seed=11)
    x2[1], d2[1] = 5.0, 0.0
    x2[1, :40], d2[1, :40] = x1[0], d1[0]
    s1 = weighted_sq_norm(x1, d1, w, bw, backend=backend)
    s2 = weighted_sq_norm(x2, d2, w, bw, backend=backend)
    alone = weighted_sq_norm(x1[:1], d1[:1], w, bw, backend=backend)
    if backend == "triton":
        assert torch.equal(s1[0], s2[1]) and torch.equal(s1[0], alone[0])
    else:
        torch.testing.assert_close(s2[1], s1[0], rtol=1e-6, atol=0)
        torch.testing.assert_close(alone[0], s1[0], rtol=1e-6, atol=0)


def test_backends_agree_bf16():
    B, T, I, O = 4, 50, 33, 47
    xt, dt = make_inputs(B, T, I, O, torch.bfloat16, padded=True, device=_triton_device())
    x, d = xt.cpu(), dt.cpu()
    f0, bf0, w, bw = make_params(O, I)
    ft, bft = f0.clone().to(xt.device), bf0.clone().to(xt.device)
    fc, bfc = f0.clone(), bf0.clone()
    fisher_accumulate(xt, dt, ft, bft, backend="triton")
    fisher_accumulate(x, d, fc, bfc, backend="torch")
    assert_close_normwise(ft - f0.to(ft.device), fc - f0, 1e-5)
    st = weighted_sq_norm(xt, dt, w.to(xt.device), bw.to(xt.device), backend="triton")
    sc = weighted_sq_norm(x, d, w, bw, backend="torch")
    torch.testing.assert_close(st.cpu(), sc, rtol=1e-5, atol=0)


def test_mixed_fp32_and_bf16_inputs_round_the_fp32_one():
    # autocast: fp32 activations into a layer whose output gradient is bf16
    x, d = make_inputs(2, 9, 11, 7, torch.float32)
    d16 = d.bfloat16()
    w = torch.rand(7, 11)
    s = weighted_sq_norm(x, d16, w, backend="torch")
    ref = weighted_sq_norm(x.bfloat16(), d16, w, backend="torch")
    assert torch.equal(s, ref)


def test_torch_max_bytes_chunking_matches_one_chunk():
    B, T, I, O = 5, 19, 24, 30
    x, d = make_inputs(B, T, I, O, torch.float32, padded=True)
    f0, bf0, w, bw = make_params(O, I)
    big = 1 << 30

    def run(mb):
        f, bf = f0.clone(), bf0.clone()
        fisher_accumulate(x, d, f, bf, backend="torch", max_bytes=mb)
        return f, bf, weighted_sq_norm(x, d, w, bw, backend="torch", max_bytes=mb)

    one = run(big)
    assert R.plan_chunks(B, O, I, big) == (B, O)
    # samples chunked, whole rows: the Fisher is summed in the same order, so bitwise equal
    mb_samples = 2 * O * I * 4
    assert R.plan_chunks(B, O, I, mb_samples) == (2, O)
    f, bf, s = run(mb_samples)
    assert torch.equal(f, one[0]) and torch.equal(bf, one[1])
    torch.testing.assert_close(s, one[2], rtol=1e-6, atol=0)
    # one sample's G does not fit: rows of O are split too, down to single rows
    for mb in (7 * I * 4, 1):
        samples, rows = R.plan_chunks(B, O, I, mb)
        assert samples == 1 and rows == max(1, mb // (I * 4)) < O
        f, bf, s = run(mb)
        torch.testing.assert_close(f, one[0], rtol=1e-6, atol=1e-6)
        assert torch.equal(bf, one[1])
        torch.testing.assert_close(s, one[2], rtol=1e-6, atol=0)


def test_torch_negative_weights():
    x, d = make_inputs(3, 11, 11, 9, torch.float32)
    w = torch.randn(9, 11)
    G, _ = exact(x, d)
    s = weighted_sq_norm(x, d, w, backend="torch", max_bytes=4 * 11 * 4)
    torch.testing.assert_close(s.double(), (w.double() * G * G).sum((1, 2)), rtol=1e-5, atol=1e-5)


def test_torch_block_buffer_respects_max_bytes():
    B, T, I, O = 6, 10, 16, 20
    x, d = make_inputs(B, T, I, O, torch.float32)
    mb = 3 * O * I * 4 + 100
    R.release_workspace()
    weighted_sq_norm(x, d, torch.rand(O, I), backend="torch", max_bytes=mb)
    assert R._tls.buf.numel() * 4 <= mb
    R.release_workspace()


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_empty_batch_or_sequence(backend):
    dev = _device(backend)
    for B, T in ((0, 5), (3, 0)):
        x = torch.randn(B, T, 6, device=dev)
        d = torch.randn(B, T, 4, device=dev)
        f = torch.ones(4, 6, device=dev)
        fisher_accumulate(x, d, f, backend=backend)
        assert torch.equal(f, torch.ones(4, 6, device=dev))
        s = weighted_sq_norm(x, d, torch.ones(4, 6, device=dev), backend=backend)
        assert s.shape == (B,) and not s.any()


def test_auto_backend_uses_torch_on_cpu(monkeypatch):
    calls = []
    real = K.fisher_accumulate_torch
    monkeypatch.setattr(K, "fisher_accumulate_torch",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    x, d = make_inputs(2, 3, 4, 5, torch.float32)
    f = torch.zeros(5, 4)
    fisher_accumulate(x, d, f)
    assert calls == [1]


def test_requires_grad_inputs_are_fine():
    x, d = make_inputs(2, 3, 4, 5, torch.float32)
    x.requires_grad_(True)
    f = torch.zeros(5, 4, requires_grad=True)
    fisher_accumulate(x, d, f, backend="torch")
    assert weighted_sq_norm(x, d, torch.ones(5, 4), backend="torch").grad_fn is None


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("what, exc, match", [
    ("x_2d", ValueError, "x must be 3-D"),
    ("batch_mismatch", ValueError, "agree on \\(B, T\\)"),
    ("seq_mismatch", ValueError, "agree on \\(B, T\\)"),
    ("fisher_dtype", TypeError, "fisher must be float32"),
    ("fisher_shape", ValueError, "fisher must have shape \\(O, I\\) = \\(5, 4\\)"),
    ("bias_shape", ValueError, "bias_fisher must have shape \\(O,\\)"),
    ("int_inputs", TypeError, "x must be float32, bfloat16 or float16"),
    ("bf16_fp16_mix", TypeError, "cast one of them"),
    ("fisher_device", ValueError, "fisher is on meta"),
    ("not_a_tensor", TypeError, "d must be a torch.Tensor"),
])
def test_errors(backend, what, exc, match):
    x, d = torch.randn(2, 3, 4), torch.randn(2, 3, 5)
    f, bf = torch.zeros(5, 4), None
    if what == "x_2d":
        x = x[0]
    elif what == "batch_mismatch":
        d = torch.randn(3, 3, 5)
    elif what == "seq_mismatch":
        d = torch.randn(2, 4, 5)
    elif what == "fisher_dtype":
        f = f.double()
    elif what == "fisher_shape":
        f = torch.zeros(4, 5)
    elif what == "bias_shape":
        bf = torch.zeros(4)
    elif what == "int_inputs":
        x = x.long()
    elif what == "bf16_fp16_mix":
        x, d = x.bfloat16(), d.half()
    elif what == "fisher_device":
        f = torch.zeros(5, 4, device="meta")
    elif what == "not_a_tensor":
        d = d.tolist()
    with pytest.raises(exc, match=match):
        fisher_accumulate(x, d, f, bf, backend=backend)
    if what.startswith("fisher") or what == "bias_shape":
        return
    with pytest.raises(exc, match=match.replace("fisher", "weight")):
        weighted_sq_norm(x, d, torch.zeros(5, 4), backend=backend)


def test_weight_errors():
    x, d = torch.randn(2, 3, 4), torch.randn(2, 3, 5)
    with pytest.raises(TypeError, match="weight must be float32"):
        weighted_sq_norm(x, d, torch.zeros(5, 4, dtype=torch.float16))
    with pytest.raises(ValueError, match="bias_weight must have shape"):
        weighted_sq_norm(x, d, torch.zeros(5, 4), torch.zeros(6))


def test_unknown_backend():
    x, d = torch.randn(2, 3, 4), torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match="backend must be one of"):
        fisher_accumulate(x, d, torch.zeros(5, 4), backend="cuda")


@pytest.mark.subprocess
def test_triton_on_cpu_without_interpreter_is_a_clear_error():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = (
        "import torch\n"
        "from bioprune.kernels.ops import fisher_accumulate, weighted_sq_norm\n"
        "x, d = torch.randn(2, 3, 4), torch.randn(2, 3, 5)\n"
        "for call in (lambda: fisher_accumulate(x, d, torch.zeros(5, 4), backend='triton'),\n"
        "             lambda: weighted_sq_norm(x, d, torch.zeros(5, 4), backend='triton')):\n"
        "    try:\n"
        "        call()\n"
        "    except RuntimeError as e:\n"
        "        assert 'TRITON_INTERPRET=1' in str(e) and 'CUDA' in str(e), e\n"
        "    else:\n"
        "        raise SystemExit('no error')\n"
        "fisher_accumulate(x, d, torch.zeros(5, 4))  # auto: PyTorch on the CPU\n"
        "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr
