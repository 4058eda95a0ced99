"""The throughput benchmarks (launch/bench/scoring.py, kernel_ops.py, gpu.py) on the CPU with the
tiniest settings: they run, time the engine's own code, count FLOPs and tokens right, and produce
the table, the JSON keys and the target verdicts that the GPU report (`make bench-gpu`) prints.
No GPU number is checked here: none exists without a GPU."""
from __future__ import annotations

import json
import time

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bioprune.kernels.ops import fisher_accumulate, weighted_sq_norm
from bioprune.launch.bench import gpu, kernel_ops, scoring, targets

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")


# ------------------------------------------------------------------------------ FLOPs, shapes


@pytest.mark.parametrize("B,T,O,I", [(3, 5, 7, 11), (2, 16, 48, 40), (1, 1, 1, 1)])
def test_gemm_flops_equal_a_direct_count_of_every_anchor_and_the_reference_kernels(B, T, O, I):
    """2·B·T·O·I against PyTorch's own FLOP counter: the two GEMM anchors and the PyTorch path
    of both kernels (whatever its blocking) do exactly that many matmul FLOPs."""
    x, d = torch.randn(B, T, I), torch.randn(B, T, O)
    want = kernel_ops.gemm_flops(B, T, O, I)
    calls = dict(kernel_ops.gemm_anchors(x, d))
    calls["fisher"] = lambda: fisher_accumulate(x, d, torch.zeros(O, I), backend="torch")
    calls["wsq"] = lambda: weighted_sq_norm(x, d, torch.ones(O, I), backend="torch")
    # a block bound of one row of G forces the path to split samples and rows
    calls["wsq_blocked"] = lambda: weighted_sq_norm(x, d, torch.ones(O, I), backend="torch",
                                                    max_bytes=4 * I)
    calls["fisher_bf16"] = lambda: fisher_accumulate(x.bfloat16(), d.bfloat16(),
                                                     torch.zeros(O, I), backend="torch")
    for name, fn in calls.items():
        with FlopCounterMode(display=False) as fc:
            fn()
        assert fc.get_total_flops() == want, name
    # and the formula itself, counted multiply by multiply: each of B·O·I outputs is a
    # length-T dot product, T multiplies and T adds
    assert want == sum(2 * T for _ in range(B) for _ in range(O) for _ in range(I))


def test_pct_of_gemm():
    assert kernel_ops.pct_of_gemm(kernel_ms=2.0, gemm_ms=1.4) == pytest.approx(70.0)
    assert kernel_ops.pct_of_gemm(kernel_ms=1.0, gemm_ms=1.0) == pytest.approx(100.0)


def test_linear_shapes_are_read_off_the_models():
    # ESM-C 600M: 36 blocks of 1152 wide; fused qkv 3·1152; SwiGLU up 2·3072, down 3072;
    # the output projections (36 blocks + the LM head's dense) and the 64-token decoder
    assert sorted(kernel_ops.linear_shapes("esmc:600m")) == sorted([
        (3456, 1152, 36), (1152, 1152, 37), (6144, 1152, 36), (1152, 3072, 36), (64, 1152, 1)])
    assert sorted(kernel_ops.linear_shapes("esmc:300m")) == sorted([
        (2880, 960, 30), (960, 960, 31), (5120, 960, 30), (960, 2560, 30), (64, 960, 1)])
    # RNA-FM: 12 layers of q, k, v, out (640) + the LM head's dense; FFN 5120; the contact head
    # is frozen, so not covered and not measured
    assert sorted(kernel_ops.linear_shapes("rnafm:base")) == sorted([
        (640, 640, 49), (5120, 640, 12), (640, 5120, 12)])
    assert kernel_ops.linear_shapes("esmc600m") == kernel_ops.linear_shapes("esmc:600m")


# ------------------------------------------------------------------------------ targets


def test_targets_mark_pass_fail_and_not_applicable():
    assert targets.check("r", 1.05, "<=", 1.1)["pass"] is True
    assert targets.check("r", 1.2, "<=", 1.1)["pass"] is False
    assert targets.check("p", 69.9, ">=", 70)["pass"] is False
    assert targets.check("p", 70.0, ">=", 70)["pass"] is True
    assert targets.check("p", 90.0, ">=", 70, applies=False)["pass"] is None
    assert [targets.verdict(targets.check("x", v, ">=", 1)) for v in (2, 0)] == ["PASS", "FAIL"]
    with pytest.raises(ValueError):
        targets.check("x", 1, "<", 2)


def test_per_model_weights_the_shapes_by_their_layer_counts():
    rows = [dict(model="m", dtype="bf16", op="wsq", O=8, I=4, layers=3, kernel_ms=2.0, gemm_ms=1.0,
                 pct_gemm=50.0),
            dict(model="m", dtype="bf16", op="wsq", O=4, I=4, layers=1, kernel_ms=1.0, gemm_ms=1.0,
                 pct_gemm=100.0)]
    (m,) = kernel_ops.per_model(rows)
    # 57.1 %, not the mean 75 %
    assert m["pct_gemm"] == pytest.approx(100 * (3 * 1 + 1) / (3 * 2 + 1))
    assert m["layers"] == 4 and m["worst"] == "8x4 50%"
    (t,) = kernel_ops.kernel_targets([m], on_gpu=True)
    assert t["pass"] is False and t["bound"] == targets.KERNEL_PCT_OF_GEMM_MIN
    assert kernel_ops.kernel_targets([m], on_gpu=False)[0]["pass"] is None


def test_scoring_targets_ratio_everywhere_tokens_per_s_on_an_h100_only():
    def rows(device, precision="bf16", copies=1):
        base = dict(model="esmc:600m", device=device, copies=copies, precision=precision)
        return [dict(base, arm="train", backend="-", over_train=1.0, tokens_per_s=100_000.0),
                dict(base, arm="score", backend="triton", over_train=1.05, tokens_per_s=90_000.0),
                dict(base, arm="score", backend="torch", over_train=1.5, tokens_per_s=60_000.0)]

    def by_name(ts):
        return {t["name"]: t["pass"] for t in ts}

    h100 = by_name(scoring.score_targets(rows("NVIDIA H100 80GB HBM3"), "bf16"))
    assert h100 == {"scoring esmc:600m triton: score ÷ train fwd+bwd": True,
                    "scoring esmc:600m triton: tokens/s per GPU": True,
                    "scoring esmc:600m torch: score ÷ train fwd+bwd": False,
                    "scoring esmc:600m torch: tokens/s per GPU": False}
    a100 = by_name(scoring.score_targets(rows("NVIDIA A100-SXM4-80GB"), "bf16"))
    assert a100["scoring esmc:600m triton: tokens/s per GPU"] is None
    assert a100["scoring esmc:600m triton: score ÷ train fwd+bwd"] is True
    fp32 = by_name(scoring.score_targets(rows("NVIDIA H100 80GB HBM3", "fp32"), "fp32"))
    assert fp32["scoring esmc:600m triton: tokens/s per GPU"] is None
    cover = by_name(scoring.score_targets(rows("NVIDIA H100 80GB HBM3", copies=7), "bf16"))
    assert cover["scoring esmc:600m triton: tokens/s per GPU"] is None


# ------------------------------------------------------------------------------ kernels bench


def test_kernels_bench_cpu_path_writes_the_table_and_json(tmp_path, capsys):
    out = tmp_path / "k.json"
    rc = kernel_ops.main(["--device", "cpu", "--models", "rnafm:tiny", "--batch", "2", "--seq", "8",
                       "--repeats", "1", "--dtype", "fp32", "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "% GEMM" in printed and "targets (kernels)" in printed
    res = json.loads(out.read_text())
    assert set(res) == {"meta", "rows", "models", "targets"}
    shapes = {(o, i): n for o, i, n in kernel_ops.linear_shapes("rnafm:tiny")}
    assert {(r["O"], r["I"]) for r in res["rows"]} == set(shapes)
    for r in res["rows"]:
        assert r["flops"] == kernel_ops.gemm_flops(2, 8, r["O"], r["I"])
        assert r["layers"] == shapes[(r["O"], r["I"])]
        assert r["gemm_ms"] == min(r["matmul_ms"], r["bmm_ms"])
        assert r["pct_gemm"] == pytest.approx(100 * r["gemm_ms"] / r["torch_ms"])
        assert r["ok"]
    assert len(res["targets"]) == 2 and all(t["pass"] is None for t in res["targets"])  # CPU


def test_kernels_bench_triton_path_runs_on_the_interpreter(capsys):
    """The CUDA code path (Triton kernels vs both GEMMs, checked against the reference) on the
    CPU under TRITON_INTERPRET=1, with a plain timer in place of triton's do_bench."""
    args = kernel_ops.parse_args(["--shapes", "40x24", "--batch", "2", "--seq", "12"])

    def timer(fn):  # every call "takes" 1 ms: then the kernel is exactly at GEMM speed
        fn()
        return 1.0

    rows, failed = kernel_ops.bench_cuda(args, kernel_ops.shapes_from(args), ["fp32", "bf16"],
                                      ["fisher", "wsq"], device="cpu", timeit=timer)
    assert not failed and len(rows) == 4
    for r in rows:
        assert r["ok"] and r["rel_err"] <= 1e-3 and r["config"] == "interpreted"
        assert r["kernel"] == "triton" and r["pct_gemm"] == pytest.approx(100.0)
        assert r["target_pass"] is None  # only Triton on CUDA gets a verdict
    assert "bmm ms" in capsys.readouterr().out


# ------------------------------------------------------------------------------ scoring bench


def test_scoring_arms_time_the_engines_own_calls(monkeypatch):
    from bioprune.engine.influence import passes

    calls = {"score": 0, "fisher": 0}
    real_score, real_fisher = passes.Scorer.score_indices, passes.fisher_pass

    def score_indices(self, *a, **k):
        calls["score"] += 1
        return real_score(self, *a, **k)

    def fisher_pass(*a, **k):
        calls["fisher"] += 1
        return real_fisher(*a, **k)

    monkeypatch.setattr(passes.Scorer, "score_indices", score_indices)
    monkeypatch.setattr(passes, "fisher_pass", fisher_pass)
    for arm in ("score", "fisher"):
        r = scoring.run_arm(arm, "rnafm", "tiny", length=6, batch_size=2, repeats=2,
                            backend="torch", precision="bf16")
        assert calls[arm] == 3  # warm-up + 2 timed
        assert r["tokens"] == 2 * (6 + 2) and r["tokens_per_s"] == r["tokens"] / r["seconds"]


def test_tokens_count_residues_and_bos_eos_never_padding():
    import numpy as np

    from bioprune.engine.data.batching import make_batch
    from bioprune.engine.data.sequence_list import SequenceList
    from bioprune.engine.models import build_model

    bundle = build_model("rnafm", "tiny")
    corpus = SequenceList.random(5, (3, 20), molecule="rna", seed=3)
    lengths = [len(corpus.residues(i)) for i in range(5)]
    assert len(set(lengths)) > 1  # the batch is padded
    one = make_batch(corpus, np.arange(5), bundle, 0, 64)
    assert scoring.real_tokens(one, bundle) == sum(n + 2 for n in lengths) < one.tokens.numel()
    cover = make_batch(corpus, np.arange(5), bundle, 0, 64, masks=scoring.mask_plans()["cover"])
    K = scoring.mask_plans()["cover"].copies
    assert K == 4 and scoring.real_tokens(cover, bundle) == K * sum(n + 2 for n in lengths)


def _run_scoring(tmp_path, capsys, *argv):
    out = tmp_path / "s.json"
    t = time.time()
    rc = scoring.main(["--device", "cpu", "--configs", "rnafm:tiny", "--length", "8",
                       "--batch", "2",
                       "--rounds", "1", "--repeats", "1", "--json", str(out), *argv])
    assert rc == 0, capsys.readouterr().err
    assert time.time() - t < 60
    return json.loads(out.read_text()), capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.subprocess
def test_scoring_bench_bf16_torch_and_triton_side_by_side(tmp_path, capsys):
    res, printed = _run_scoring(tmp_path, capsys, "--arms", "train", "score",
                                "--backend", "torch", "triton", "--precision", "bf16")
    assert set(res) == {"meta", "results", "targets"}
    assert res["meta"]["precision"] == "bf16" and res["meta"]["cover_copies"] == 4
    rows = {(r["arm"], r["backend"]): r for r in res["results"]}
    assert set(rows) == {("train", "-"), ("score", "torch"), ("score", "triton")}
    train = rows[("train", "-")]
    for r in rows.values():
        assert r["tokens"] == 2 * (8 + 2)  # residues + BOS/EOS, one mask, no padding
        assert r["tokens_per_s"] == pytest.approx(r["tokens"] / r["seconds"])
        assert r["over_train"] == pytest.approx(r["seconds"] / train["seconds"])
        assert r["precision"] == "bf16"
    ratio = {t["name"]: t for t in res["targets"]}
    torch_t = ratio["scoring rnafm:tiny torch: score ÷ train fwd+bwd"]
    assert torch_t["pass"] is (rows[("score", "torch")]["over_train"] <= 1.1)
    assert ratio["scoring rnafm:tiny triton: score ÷ train fwd+bwd"]["pass"] is None  # interpreter
    for col in ("tokens/s", "÷ train", "build ms", "≤ 1.1 x train: ", "4 masked copies"):
        assert col in printed


@pytest.mark.slow
@pytest.mark.subprocess
def test_scoring_bench_fisher_arm_with_the_mask_cover(tmp_path, capsys):
    res, printed = _run_scoring(tmp_path, capsys, "--arms", "train", "fisher", "--masks", "cover")
    rows = {r["arm"]: r for r in res["results"]}
    assert set(rows) == {"train", "fisher"} and res["meta"]["precision"] == "fp32"
    for r in rows.values():  # 4 masked copies of each of the 2 sequences (the default cover)
        assert r["copies"] == 4 and r["tokens"] == 2 * 4 * (8 + 2)
    assert res["targets"] == []  # no score arm, nothing to check
    assert "mask cover: 4 rows per sequence" in printed


# ------------------------------------------------------------------------------ the GPU command


@no_cuda
def test_gpu_benchmarks_refuse_without_cuda(tmp_path, capsys):
    assert gpu.main(["--out", str(tmp_path / "g")]) == gpu.NO_CUDA == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no CUDA" in err
    assert not (tmp_path / "g").exists()
    assert kernel_ops.main(["--device", "cuda"]) == 2
    with pytest.raises(SystemExit) as e:
        scoring.main(["--device", "cuda"])
    assert e.value.code == 2


@pytest.mark.slow
@pytest.mark.subprocess
def test_gpu_report_runs_every_benchmark_and_collects_the_targets(tmp_path, capsys):
    """The orchestration of `make bench-gpu`, run on the CPU with the tiniest settings."""
    out = tmp_path / "g"
    out.mkdir()
    (out / "kernels.json").write_text('{"targets": [{"stale": 1}]}')  # an earlier run's file
    rc = gpu.main(["--_device", "cpu", "--out", str(out),
                   "--kernels", "--shapes 32x16 --batch 2 --seq 4 --repeats 1 --dtype fp32",
                   "--scoring", "--configs rnafm:tiny --arms train score --length 6 --batch 2 "
                                "--rounds 1 --repeats 1",
                   "--attention", "--lengths 8 --tokens 16 --repeats 1 --n 4"])
    assert rc == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert {n: r["rc"] for n, r in summary["runs"].items()} == {"kernels": 0, "scoring": 0,
                                                                 "attention": 0}
    names = [t["name"] for t in summary["targets"]]
    assert any(n.startswith("kernels custom") for n in names)
    assert "scoring rnafm:tiny torch: score ÷ train fwd+bwd" in names
    assert "attention rnafm:tiny: default plan ÷ one mask, scoring (SDPA)" in names
    assert not any("stale" in t for t in summary["targets"])
    assert sum(summary["counts"].values()) == len(names)
    assert f"{summary['counts']['pass']} PASS, {summary['counts']['fail']} FAIL" in printed


def test_estimators_bench_small_run_writes_every_column(tmp_path, capsys):
    """launch/bench/estimators.py end to end on a dozen sequences: every estimator gets its
    stability, reference agreement and cost columns, and the cross-term can go negative."""
    from bioprune.launch.bench import estimators

    out = tmp_path / "est"
    assert estimators.main(["--model", "rnafm", "--n", "12", "--train-steps", "2",
                            "--estimators", "K1", "K2x", "--references", "C2", "C2x",
                            "--max-length", "40", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["estimators"]) == {"K1", "K2x"} and set(res["references"]) >= {"C2", "C2x"}
    k1, k2x = res["estimators"]["K1"], res["estimators"]["K2x"]
    assert (k1["copies"], k2x["copies"], k2x["estimator"]) == (1, 2, "cross")
    assert k1["cost_vs_K1"] == 1.0 and k2x["score_ms_per_seq"] > 0 and k1["negative_share"] == 0
    for r in (k1, k2x):
        assert -1 <= r["spearman_vs_C2"] <= 1 and -1 <= r["spearman_seeds"] <= 1
    assert "| K2x (cross) | 2 |" in capsys.readouterr().out
