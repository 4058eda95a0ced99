"""Hugging Face masked LMs as a model family: ESM-2 presets and local ``hf:DIR`` directories
through scoring, pretraining and export (``from_pretrained`` round trip), 1 vs 2 ranks.

The per-sample gradient, batching and λ → 0 identities of ESM-2 run in test_grad_sample.py and
test_scoring.py (parametrised over every family)."""
import csv
import json

import numpy as np
import pytest
import torch

from bioprune.engine.data.batching import make_batch
from bioprune.engine.data.sequence_list import SequenceList
from bioprune.engine.models import build_model, load_saved_model, save_model
from bioprune.engine.models.hf import esm2_config, esm2_tokenizer, molecule_of_vocab
from pipeline_utils import data_dir, read_scores, run

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _protein_fasta(tmp_path, n=24, max_len=60):
    """The first ``n`` NetSurfP sequences (cropped) as a FASTA file: a real protein corpus."""
    path = tmp_path / "proteins.fasta"
    with open(data_dir() / "protein" / "netsurfp_ss3.csv") as f:
        rows = list(csv.DictReader(f))[:n]
    path.write_text("".join(f">{r['id']}\n{r['sequence'][:max_len]}\n" for r in rows))
    return str(path)


def _hf_dir(tmp_path, with_weights: bool):
    """A local Hugging Face directory (config + tokenizer [+ weights]) of an ESM-2-shaped model."""
    from transformers import EsmForMaskedLM

    d = tmp_path / ("hf_w" if with_weights else "hf_cfg")
    torch.manual_seed(0)
    net = EsmForMaskedLM(esm2_config("tiny"))
    if with_weights:
        net.save_pretrained(d)
    else:
        net.config.save_pretrained(d)
    esm2_tokenizer().save_pretrained(d)
    return d


def test_hf_directory_builds_with_its_weights_and_molecule(tmp_path):
    from transformers import EsmForMaskedLM

    d = _hf_dir(tmp_path, with_weights=True)
    bundle = build_model(f"hf:{d}")
    assert bundle.name == "hf" and bundle.molecule == "protein"
    ref = EsmForMaskedLM.from_pretrained(d).eval()
    corpus = SequenceList.random(3, (5, 20), molecule="protein", seed=0)
    b = make_batch(corpus, [0, 1, 2], bundle, seed=0)
    with torch.no_grad():
        mine = bundle.module.eval()(b.tokens)
        theirs = ref(input_ids=b.tokens, attention_mask=b.tokens.ne(bundle.pad_id).long()).logits
    torch.testing.assert_close(mine, theirs)
    # a directory without weights is a fresh model of that architecture
    fresh = build_model("hf", str(_hf_dir(tmp_path, with_weights=False)))
    assert sum(p.numel() for p in fresh.module.parameters()) == \
        sum(p.numel() for p in bundle.module.parameters())


def test_molecule_from_vocabulary():
    assert molecule_of_vocab(esm2_tokenizer().get_vocab()) == "protein"
    assert molecule_of_vocab({c: i for i, c in enumerate("<pad> A C G T N".split())}) == "rna"
    with pytest.raises(ValueError, match="cannot tell the molecule"):
        molecule_of_vocab({"a": 0, "b": 1})


def test_export_loads_with_from_pretrained_and_back(tmp_path):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    torch.manual_seed(0)
    bundle = build_model("esm2", "tiny")
    with torch.no_grad():
        for p in bundle.module.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_model(bundle, tmp_path / "export")
    net = AutoModelForMaskedLM.from_pretrained(tmp_path / "export").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "export")
    ids = tok(["MKTAYIAKQR"], return_tensors="pt")
    with torch.no_grad():
        theirs = net(**ids).logits
        mine = bundle.module.eval()(ids["input_ids"])
    torch.testing.assert_close(mine, theirs)
    again = load_saved_model(tmp_path / "export")
    assert again.name == "esm2" and again.size == "tiny"
    for (n, a), (_, b) in zip(bundle.module.state_dict().items(),
                              again.module.state_dict().items()):
        assert torch.equal(a, b), n
    # evaluate.py --run takes such an export as a pretraining output (its config.json keeps our
    # model/size as bioprune_model/bioprune_size) and refuses another size by name
    from bioprune.launch.evaluate import main as evaluate

    (tmp_path / "run").mkdir()
    (tmp_path / "export").rename(tmp_path / "run" / "final")
    seqs = tmp_path / "p.fasta"
    seqs.write_text(">a\nMKTAYIAKQRQISFVKSHFSRQ\n>b\nMVLSPADKTNVKAAWGKVGAHAG\n")
    base = ["--model", "esm2", "--run", str(tmp_path / "run"), "--tasks", "mlm", "--mlm-data",
            str(seqs), "--mlm-all", "--probe-seeds", "1", "--no-progress"]
    assert evaluate([*base, "--model-size", "tiny", "--out", str(tmp_path / "ev")]) == 0
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["tasks"]["mlm"]["n_test"] == 2
    assert evaluate([*base, "--model-size", "8m", "--out", str(tmp_path / "ev2")]) == 2


@pytest.mark.slow
@pytest.mark.multirank
@pytest.mark.subprocess
def test_esm2_scores_same_on_one_and_two_ranks_then_pretrain_exports_hf(tmp_path):
    from transformers import AutoModelForMaskedLM

    data = _protein_fasta(tmp_path)
    common = ["--data", data, "--model", "esm2", "--model-size", "tiny", "--subset-size", "12",
              "--finetune-epochs", "1", "--finetune-global-batch", "8", "--micro-batch-size", "4",
              "--chunk-size", "10", "--corpus-cache", str(tmp_path / "corpus")]
    run("score.py", [*common, "--out", str(tmp_path / "r1")])
    run("score.py", [*common, "--out", str(tmp_path / "r2")], ranks=2)
    one, two = read_scores(tmp_path / "r1" / "scores"), read_scores(tmp_path / "r2" / "scores")
    assert len(one["index"]) == 24 and np.array_equal(one["index"], two["index"])
    np.testing.assert_allclose(two["score"], one["score"], rtol=1e-4)
    assert (one["score"] > 0).all()
    np.save(tmp_path / "core.npy", np.arange(0, 24, 2, dtype=np.int64))
    run("pretrain.py", ["--data", data, "--model", "esm2", "--model-size", "tiny",
                        "--indices", str(tmp_path / "core.npy"), "--steps", "3", "--warmup", "1",
                        "--micro-batch-size", "4", "--heldout-size", "2",
                        "--corpus-cache", str(tmp_path / "corpus"), "--out", str(tmp_path / "pt")])
    net = AutoModelForMaskedLM.from_pretrained(tmp_path / "pt" / "final")
    fresh = build_model("esm2", "tiny")
    changed = [n for n, p in net.state_dict().items()
               if not torch.equal(p, fresh.module.net.state_dict()[n])]
    assert changed, "pretraining changed no weight"
