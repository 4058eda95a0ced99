"""Scoring under an MPI launcher (mpiexec from the mpich wheel, as srun --mpi would start it): the
ranks find each other through mpi4py and give the scores of the deepspeed launcher's run."""
import json

import numpy as np
import pytest

from pipeline_utils import data_dir, read_scores, run, small_corpus

# one scoring run under the deepspeed launcher and one under mpiexec, 2 ranks each
pytestmark = [pytest.mark.skipif(not (data_dir() / "rna").exists(), reason="no sample data"),
              pytest.mark.slow, pytest.mark.multirank, pytest.mark.subprocess]

ARGS = ["--model", "rnafm", "--model-size", "tiny", "--max-length", "64", "--subset-size", "16",
        "--finetune-epochs", "1", "--finetune-global-batch", "8", "--micro-batch-size", "4",
        "--chunk-size", "8", "--seed", "3"]


def test_mpiexec_two_ranks_score_like_the_deepspeed_launcher(tmp_path):
    files = small_corpus(tmp_path, n_fasta=12, n_csv=12)
    common = ["--data", *files, *ARGS, "--corpus-cache", str(tmp_path / "corpus")]
    run("score.py", [*common, "--out", str(tmp_path / "ds")], ranks=2)
    run("score.py", [*common, "--out", str(tmp_path / "mpi")], ranks=2, mpi=True)
    assert json.loads((tmp_path / "mpi" / "manifest.json").read_text())["world_size"] == 2
    a, b = read_scores(tmp_path / "ds" / "scores"), read_scores(tmp_path / "mpi" / "scores")
    np.testing.assert_array_equal(a["index"], b["index"])
    np.testing.assert_allclose(b["score"], a["score"], rtol=1e-6)
