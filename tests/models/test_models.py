"""Model building: sizes, vocabularies, local checkpoints (plain and RNA-FM's released format)."""
import argparse

import pytest
import torch

from bioprune.engine.data.batching import make_batch
from bioprune.engine.models import build_model, load_saved_model, save_model
from bioprune.engine.data.sequence_list import SequenceList


@pytest.mark.parametrize("name", ["rnafm", "esmc"])
def test_save_and_load_round_trip(name, tmp_path):
    torch.manual_seed(0)
    a = build_model(name, "tiny")
    save_model(a, tmp_path / "m")
    b = load_saved_model(tmp_path / "m")
    corpus = SequenceList.random(3, (5, 20), molecule="rna" if name == "rnafm" else "protein")
    batch = make_batch(corpus, [0, 1, 2], a, 0)
    with torch.no_grad():
        assert torch.equal(a.module.eval()(batch.tokens), b.module.eval()(batch.tokens))


def test_rnafm_release_checkpoint_format(tmp_path):
    # RNA-FM_pretrained.pth holds fairseq-style args and "encoder."-prefixed keys; fm's own
    # loader converts them. Write one from a tiny model and read it back through build_model.
    torch.manual_seed(0)
    src = build_model("rnafm", "tiny")
    args = argparse.Namespace(arch="roberta_large", encoder_layers=2, encoder_embed_dim=64,
                              encoder_ffn_embed_dim=128, encoder_attention_heads=4,
                              max_positions=1024, token_dropout=False)
    state = {}
    for k, v in src.module.net.state_dict().items():
        if k.startswith("contact_head"):
            continue
        state[("encoder." if k.startswith("lm_head") else "encoder.sentence_encoder.") + k] = v
    torch.save({"args": args, "model": state}, tmp_path / "RNA-FM_pretrained.pth")
    loaded = build_model("rnafm", "base", checkpoint=str(tmp_path / "RNA-FM_pretrained.pth"))
    assert loaded.size == "tiny"  # the file's architecture wins over the requested size
    expect = dict(src.module.net.state_dict())
    # fm's loader zeroes the mask token's embedding row ("for token drop"), as for the release
    expect["embed_tokens.weight"] = expect["embed_tokens.weight"].clone()
    expect["embed_tokens.weight"][loaded.mask_id] = 0
    for k, v in expect.items():
        if not k.startswith("contact_head") and k != "lm_head.weight":
            assert torch.equal(loaded.module.net.state_dict()[k], v), k


def test_checkpoint_of_another_architecture_is_an_error(tmp_path):
    save_model(build_model("esmc", "tiny"), tmp_path / "m")
    with pytest.raises(ValueError, match="do not fit this architecture"):
        build_model("rnafm", "tiny", checkpoint=str(tmp_path / "m" / "model.safetensors"))


def test_tokenisation_follows_each_vocabulary():
    rna = build_model("rnafm", "tiny")
    prot = build_model("esmc", "tiny")
    lut = rna.residue_lut
    assert lut[ord("N")] == rna.unk_id and lut[ord("A")] != rna.unk_id and lut[ord("T")] == -1
    from esm.tokenization import EsmSequenceTokenizer

    tok = EsmSequenceTokenizer()
    seq = "MKXBZUOW"
    ids = tok(seq).input_ids[1:-1]
    assert [int(prot.residue_lut[ord(c)]) for c in seq] == ids
    vocab = tok.get_vocab()
    assert [int(i) for i in prot.random_residue_ids] == [vocab[c] for c in "ACDEFGHIKLMNPQRSTVWY"]


def test_masks_are_a_function_of_seed_and_index():
    b = build_model("rnafm", "tiny")
    corpus = SequenceList.random(4, (40, 80))
    x = make_batch(corpus, [0, 1, 2, 3], b, seed=7)
    y = make_batch(corpus, [3, 1], b, seed=7)
    for row_y, i in enumerate([3, 1]):
        L = int(y.length[row_y]) + 2
        assert torch.equal(x.tokens[i, :L], y.tokens[row_y, :L])
        assert torch.equal(x.labels[i, :L], y.labels[row_y, :L])
    n = (x.labels != -100).sum(1)
    assert torch.equal(n, torch.clamp(torch.floor(0.15 * x.length.double() + 0.5).long(), min=1))
    z = make_batch(corpus, [0, 1, 2, 3], b, seed=8)
    assert not torch.equal(x.labels, z.labels)
    cropped = make_batch(corpus, [0], b, seed=7, max_residues=10)
    assert cropped.tokens.shape[1] == 12 and int(cropped.length[0]) == 10
