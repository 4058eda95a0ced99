"""ZeRO-3 scoring: the model built partitioned, the Fisher reduce-scattered into
partitions, the weights gathered per layer inside the scoring backward. Reference: the unsharded
run (ZeRO stage 0, one rank) — scores, Fisher, adapted weights and the coreset must match it on
1, 2 and 3 ranks."""
import json

import numpy as np
import pytest
import torch

from pipeline_utils import data_dir, read_scores, run, small_corpus

needs_data = pytest.mark.skipif(not (data_dir() / "rna").exists(), reason="no sample data")

SCORE = ["--max-length", "64", "--subset-size", "12", "--micro-batch-size", "4",
         "--chunk-size", "8", "--seed", "5"]


def _score(tmp_path, files, name, stage, ranks, extra=()):
    out = tmp_path / name
    run("score.py", ["--data", *files, *SCORE, *extra, "--zero-stage", str(stage),
                     "--corpus-cache", str(tmp_path / "corpus"), "--out", str(out)], ranks=ranks)
    return out


def _fisher(out):
    from safetensors.torch import load_file

    return load_file(str(out / "fisher.safetensors"))


def _assert_same_run(ref, got, rtol=1e-5):
    a, b = read_scores(ref / "scores"), read_scores(got / "scores")
    np.testing.assert_array_equal(a["index"], b["index"])
    np.testing.assert_allclose(b["score"], a["score"], rtol=rtol)
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-5, atol=1e-6)
    fa, fb = _fisher(ref), _fisher(got)
    assert fa.keys() == fb.keys()
    for k in fa:
        torch.testing.assert_close(fb[k], fa[k], rtol=1e-5, atol=1e-6 * float(fa[k].abs().max()))


def _zero_record(out):
    return json.loads((out / "manifest.json").read_text())["zero"]


@needs_data
@pytest.mark.parametrize("model", ["rnafm", "esmc"])
@pytest.mark.slow
@pytest.mark.multirank
@pytest.mark.subprocess
def test_zero3_scores_equal_unsharded_on_1_2_3_ranks(tmp_path, model):
    """w/o ft, so every run scores the same model: partitioning alone must not move a score."""
    if model == "rnafm":
        files = small_corpus(tmp_path, n_fasta=14, n_csv=12)
    else:
        files = [str(tmp_path / "p.csv")]
        lines = (data_dir() / "protein" / "netsurfp_ss3.csv").read_text().splitlines()[:27]
        (tmp_path / "p.csv").write_text("\n".join(lines) + "\n")
    extra = ["--model", model, "--finetune-epochs", "0", "--mask-draws", "2"]
    ref = _score(tmp_path, files, "ref", 0, 1, extra)
    for ranks in ((1, 2, 3) if model == "rnafm" else (2,)):
        got = _score(tmp_path, files, f"z3r{ranks}", 3, ranks, extra)
        _assert_same_run(ref, got)
        zero = _zero_record(got)
        assert zero["stage"] == 3 and zero["partitioned"] and zero["world_size"] == ranks
        for phase in ("adapt", "fisher", "score"):
            assert len(zero["peak_memory_mb_per_rank"][phase]["rss"]) == ranks
    # the coreset is the same
    for out in (ref, got):
        run("select_coreset.py", ["--scores", str(out), "--strategy", "cci", "--fraction", "0.3",
                                  "--out", str(out / "sel")])
    np.testing.assert_array_equal(np.load(ref / "sel" / "coreset.npy"),
                                  np.load(got / "sel" / "coreset.npy"))


@needs_data
@pytest.mark.slow
@pytest.mark.multirank
@pytest.mark.subprocess
def test_zero3_adaptation_matches_the_unsharded_one(tmp_path):
    """Fine-tuning under ZeRO-3 on 2 ranks, partitions offloaded (ZeRO-Infinity), = stage 0 on
    1 rank with the same global batch: the exported adapted weights (gathered to rank 0) and
    then the scores agree."""
    from safetensors.torch import load_file

    files = small_corpus(tmp_path, n_fasta=10, n_csv=10)
    extra = ["--finetune-epochs", "1", "--finetune-warmup", "1", "--finetune-global-batch", "8",
             "--mask-draws", "1"]
    ref = _score(tmp_path, files, "ref", 0, 1, extra)
    got = _score(tmp_path, files, "z3", 3, 2, [*extra, "--offload", "cpu"])
    assert _zero_record(got)["offload"] == "cpu"
    wa = load_file(str(ref / "adapted" / "model.safetensors"))
    wb = load_file(str(got / "adapted" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-6)
    _assert_same_run(ref, got)


@needs_data
@pytest.mark.slow
@pytest.mark.multirank
@pytest.mark.subprocess
def test_zero3_mid_model_two_ranks(tmp_path):
    files = small_corpus(tmp_path, n_fasta=6, n_csv=6)
    extra = ["--model-size", "mid", "--finetune-epochs", "0", "--mask-draws", "1",
             "--subset-size", "6"]
    ref = _score(tmp_path, files, "ref", 0, 1, extra)
    got = _score(tmp_path, files, "z3", 3, 2, extra)
    _assert_same_run(ref, got)


@pytest.mark.subprocess
def test_offload_needs_stage_3(tmp_path):
    p = run("score.py", ["--data", str(tmp_path / "x.fasta"), "--out", str(tmp_path / "o"),
                         "--offload", "cpu", "--zero-stage", "2"], check=False)
    assert p.returncode == 2
    assert "--zero-stage 3" in p.stderr and "Traceback" not in p.stderr


def test_partition_layout_is_zero3s():
    """rank r holds [r·S, r·S + S), S = ceil(n / world): the pieces tile the tensor exactly."""
    from bioprune.engine.runtime.zero3 import partition_of

    for n, world in [(10, 3), (9, 3), (1, 4), (7, 1), (1000003, 8)]:
        parts = [partition_of(n, r, world) for r in range(world)]
        assert all(p.size == -(-n // world) for p in parts)
        covered = np.concatenate([np.arange(p.start, p.start + p.valid) for p in parts])
        np.testing.assert_array_equal(covered, np.arange(n))


def test_streamed_safetensors_read_back_by_the_library(tmp_path):
    from safetensors import safe_open

    from bioprune.engine.io.safetensors_stream import write_streamed
    from bioprune.engine.runtime.zero3 import partition_of, read_partition

    g = torch.Generator().manual_seed(0)
    tensors = {"a.weight": torch.randn(7, 5, generator=g), "b": torch.randn(3, generator=g),
               "c.w": torch.randn(2, 3, 4, generator=g)}
    path = tmp_path / "f.safetensors"
    write_streamed(path, [(k, tuple(v.shape)) for k, v in tensors.items()], tensors.values(),
                   metadata={"subset_size": 12})
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"subset_size": "12"}
        assert set(f.keys()) == set(tensors)
        for k, v in tensors.items():
            torch.testing.assert_close(f.get_tensor(k), v, rtol=0, atol=0)
    for k, v in tensors.items():   # each rank reads only its partition
        for world in (1, 2, 3, 5):
            got = torch.cat([read_partition(path, k, tuple(v.shape),
                                            partition_of(v.numel(), r, world))
                             for r in range(world)])
            torch.testing.assert_close(got, v.reshape(-1), rtol=0, atol=0)
    with pytest.raises(ValueError, match="declared"):
        write_streamed(tmp_path / "g.safetensors", [("x", (2, 2))], [torch.zeros(3)])
    assert not (tmp_path / "g.safetensors").exists()


@needs_data
@pytest.mark.slow
@pytest.mark.multirank
@pytest.mark.subprocess
def test_zero3_pretraining_matches_stage_2(tmp_path):
    """pretrain.py under ZeRO-3 (model built partitioned, exported by gathering to rank 0) trains
    as stage 2 does; a held-out set of 9 on 2 ranks with micro-batch 4 gives the ranks 2 and 1
    evaluation batches, so the evaluation must keep them in step."""
    from safetensors.torch import load_file

    files = small_corpus(tmp_path, n_fasta=10, n_csv=10)
    outs = {}
    for stage in (2, 3):
        outs[stage] = tmp_path / f"z{stage}"
        run("pretrain.py", ["--data", *files, "--all", "--steps", "2", "--micro-batch-size", "4",
                            "--heldout-size", "9", "--warmup", "1", "--max-length", "64",
                            "--zero-stage", str(stage), "--corpus-cache", str(tmp_path / "corpus"),
                            "--out", str(outs[stage])], ranks=2)
    wa = load_file(str(outs[2] / "final" / "model.safetensors"))
    wb = load_file(str(outs[3] / "final" / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-6)
    ma = (outs[2] / "metrics.csv").read_text().splitlines()[1].split(",")
    mb = (outs[3] / "metrics.csv").read_text().splitlines()[1].split(",")
    np.testing.assert_allclose([float(x) for x in mb[4:]], [float(x) for x in ma[4:]], rtol=1e-5)
