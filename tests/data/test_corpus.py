"""Corpus layer: readers, alphabets, memory-mapped corpus, cache, errors."""
from __future__ import annotations

import gzip
import os
import time
from pathlib import Path

import numpy as np
import pytest

from bioprune.engine.data.alphabets import get_alphabet
from bioprune.engine.data.corpus import Corpus, CorpusError, load_corpus
from bioprune.engine.data.paths import data_dir
from pipeline_utils import spawn_ranks

RNA_FILES = {
    "archiveII.csv": 3975,
    "bprna_nf15.csv": 8788,
    "rnacentral_sample.fasta": 1400,
    "rfam_RF00001.fasta": 712,
    "rfam_RF00005.fasta": 954,
    "rfam_RF00010.fasta": 458,
}

SEQS = ["ACGUACGUAGGCUAGCUAGCUAGCAUCGAUCGAUCGACUGAUCGAUCGAUGCAUGCAUGCAUGCAUGCAUCG",
        "GGGAAACCC", "UUUUAGCAGCUAGCUAGCAGUCGAUGCAUGCAUGCAUCGAUCG", "A"]
IDS = ["s1", "s2", "s3", "s4"]


def fasta_text(ids, seqs, width=60, desc=True, crlf=False):
    nl = "\r\n" if crlf else "\n"
    out = []
    for i, s in zip(ids, seqs):
        out.append(f">{i}" + (" some description here" if desc else ""))
        out.extend(s[k:k + width] for k in range(0, len(s), width))
    return nl.join(out) + nl


def check(c: Corpus, ids=IDS, seqs=SEQS):
    assert len(c) == len(seqs)
    assert [c.sequence(i) for i in range(len(c))] == seqs
    assert [c.record_id(i) for i in range(len(c))] == ids
    assert c.lengths.dtype == np.int32
    assert list(c.lengths) == [len(s) for s in seqs]
    r = c.residues(0)
    assert r.dtype == np.uint8 and r.tobytes().decode() == seqs[0]


def build(paths, tmp_path, molecule="rna", name="cache", **kw):
    return Corpus.build(paths, molecule, tmp_path / name, **kw)


def err(paths, tmp_path, molecule="rna", **kw) -> str:
    with pytest.raises(CorpusError) as e:
        build(paths, tmp_path, molecule, name="failed", **kw)
    # an interrupted / failed build leaves nothing behind
    assert not (tmp_path / "failed").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".failed")]
    return str(e.value)


# ------------------------------------------------------------------ formats round-trip


def test_fasta_multiline(tmp_path):
    p = tmp_path / "a.fasta"
    p.write_text("\n" + fasta_text(IDS, SEQS, width=10) + "\n\n")
    c = build([p], tmp_path)
    check(c)
    assert c.source(3) == (str(p), 4)
    assert c.stats["inputs"][0]["records"] == 4


def test_fasta_crlf_and_spaces(tmp_path):
    p = tmp_path / "a.fa"
    p.write_bytes(fasta_text(IDS, SEQS, width=7, crlf=True).replace("GGGAAA", "GGG AAA").encode())
    check(build([p], tmp_path))


def test_fasta_small_chunks_match(tmp_path):
    """Records longer than the read chunk and records split across chunks."""
    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(list("ACGU"), size=int(n))) for n in rng.integers(1, 400, 200)]
    ids = [f"r{i}" for i in range(200)]
    p = tmp_path / "big.fasta"
    p.write_text(fasta_text(ids, seqs, width=50))
    c = build([p], tmp_path, chunk_bytes=97)
    check(c, ids, seqs)


def test_fasta_gz(tmp_path):
    p = tmp_path / "a.fasta.gz"
    p.write_bytes(gzip.compress(fasta_text(IDS, SEQS).encode()))
    check(build([p], tmp_path))


def _csv(ids, seqs, sep=",", idcol="id"):
    lines = [sep.join([idcol, "sequence", "structure"])]
    lines += [sep.join([i, s, "." * len(s)]) for i, s in zip(ids, seqs)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("name,sep,gz", [("a.csv", ",", False), ("a.tsv", "\t", False),
                                          ("a.tab", "\t", False), ("a.csv.gz", ",", True),
                                          ("a.tsv.gz", "\t", True)])
def test_tables(tmp_path, name, sep, gz):
    text = _csv(IDS, SEQS, sep).encode()
    p = tmp_path / name
    p.write_bytes(gzip.compress(text) if gz else text)
    c = build([p], tmp_path)
    check(c)
    assert c.stats["column"] == "sequence"


def test_csv_ids_generated_and_explicit(tmp_path):
    p = tmp_path / "noid.csv"
    p.write_text(_csv(["x1", "x2", "x3", "x4"], SEQS, idcol="name"))
    check(build([p], tmp_path), ["noid.csv:1", "noid.csv:2", "noid.csv:3", "noid.csv:4"])
    check(build([p], tmp_path, name="c2", id_column="name"), ["x1", "x2", "x3", "x4"])


def test_csv_other_column_and_na(tmp_path):
    p = tmp_path / "b.csv"
    p.write_text("id,seq\n1,NA\n2,acgu\n")  # 'NA' is a sequence, not a missing value
    c = build([p], tmp_path, column="seq")
    assert [c.sequence(0), c.sequence(1)] == ["NA", "ACGU"]
    assert [c.record_id(0), c.record_id(1)] == ["1", "2"]


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    p = tmp_path / "a.parquet"
    t = pa.table({"other": [1, 2, 3, 4], "sequence": SEQS, "id": IDS})
    pq.write_table(t, p, row_group_size=3)
    check(build([p], tmp_path, batch_rows=2))


def test_hf_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    d = tmp_path / "hf"
    table = {"id": IDS, "sequence": SEQS, "label": [0, 1, 0, 1]}
    datasets.Dataset.from_dict(table).save_to_disk(str(d))
    check(build([d], tmp_path, batch_rows=3))


def test_hf_dataset_dict(tmp_path):
    datasets = pytest.importorskip("datasets")
    d = tmp_path / "hfd"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"id": IDS[:3], "sequence": SEQS[:3]}),
        "test": datasets.Dataset.from_dict({"id": IDS[3:], "sequence": SEQS[3:]}),
    }).save_to_disk(str(d))
    msg = err([d], tmp_path)
    assert str(d) in msg and "splits: train, test" in msg and "::" in msg
    c = build([f"{d}::train", f"{d}::test"], tmp_path)
    check(c)
    assert c.source(3) == (f"{d}::test", 1)
    msg = err([f"{d}::valid"], tmp_path)
    assert "'valid' not found" in msg and "train, test" in msg


def test_several_inputs_concatenate(tmp_path):
    a = tmp_path / "a.fasta"
    a.write_text(fasta_text(["a1", "a2"], ["ACGU", "GGGG"]))
    b = tmp_path / "b.csv"
    b.write_text("id,sequence\nb1,CCCC\nb2,UUUU\nb3,AAAA\n")
    g = tmp_path / "c.fa.gz"
    g.write_bytes(gzip.compress(fasta_text(["c1"], ["GCGC"]).encode()))
    c = build([b, a, g], tmp_path)
    check(c, ["b1", "b2", "b3", "a1", "a2", "c1"], ["CCCC", "UUUU", "AAAA", "ACGU", "GGGG", "GCGC"])
    assert [c.source(i) for i in range(6)] == [(str(b), 1), (str(b), 2), (str(b), 3),
                                               (str(a), 1), (str(a), 2), (str(g), 1)]
    assert c.source(-1) == (str(g), 1)
    assert [f["records"] for f in c.stats["inputs"]] == [3, 2, 1]
    assert c.file_range(1) == (3, 5)
    assert c.stats["n_records"] == 6 and c.stats["total_residues"] == 24
    with pytest.raises(IndexError):
        c.sequence(6)


# ------------------------------------------------------------------ alphabets


def test_rna_normalisation_and_ambiguity(tmp_path):
    p = tmp_path / "r.fasta"
    p.write_text(">x\nacgt\nTTNN\n>y\nRYKMSWBDHVNn\n")
    c = build([p], tmp_path)
    assert c.sequence(0) == "ACGUUUNN"
    assert c.sequence(1) == "RYKMSWBDHVNN"
    s = c.stats
    assert s["ambiguity_codes"] == {"R": 1, "Y": 1, "K": 1, "M": 1, "S": 1, "W": 1, "B": 1,
                                    "D": 1, "H": 1, "V": 1, "N": 4}
    assert s["t_read_as_u"] == 3 and s["lowercase_residues"] == 5
    assert s["inputs"][0]["ambiguity_codes"]["N"] == 4


def test_alphabet_tables():
    rna = get_alphabet("rna")
    assert rna.lut[ord("t")] == ord("U") and rna.lut[ord("u")] == ord("U")
    for bad in "XE-.*0J":
        assert rna.lut[ord(bad)] == 0
    assert rna.normalize(" ac gt\r\n") == b"ACGU"
    prot = get_alphabet("protein")
    for ok in "XBZUOxbzuo":
        assert prot.lut[ord(ok)] == ord(ok.upper())
    for bad in "J-.0 ":
        assert prot.lut[ord(bad)] == 0
    assert prot.normalize("mkv*") == b"MKV"
    with pytest.raises(ValueError):
        prot.normalize("M*K")
    with pytest.raises(ValueError):
        get_alphabet("dna")


def test_protein_nonstandard_and_stop(tmp_path):
    p = tmp_path / "p.faa"
    p.write_text(">p1\nMKXBZ\nUOak*\n>p2\nMKV*\n>p3\nLLL\n")
    c = build([p], tmp_path, molecule="protein")
    assert [c.sequence(i) for i in range(3)] == ["MKXBZUOAK", "MKV", "LLL"]
    assert list(c.lengths) == [9, 3, 3]
    s = c.stats
    assert s["nonstandard_residues"] == {"X": 1, "B": 1, "Z": 1, "U": 1, "O": 1}
    assert s["stripped_stops"] == 2


@pytest.mark.parametrize("seq,char", [("MK*V", "'*'"), ("MK**", "'*'"), ("MKJ", "'J'"),
                                      ("MK-V", "'-'"), ("MK.V", "'.'"), ("MK1", "'1'")])
def test_protein_bad(tmp_path, seq, char):
    p = tmp_path / "p.faa"
    p.write_text(f">ok\nMKV\n>bad\n{seq}\n")
    msg = err([p], tmp_path, molecule="protein")
    assert str(p) in msg and "record 2" in msg and "'bad'" in msg and char in msg


def test_protein_only_stop_is_empty(tmp_path):
    p = tmp_path / "p.faa"
    p.write_text(">p\n*\n")
    assert "empty record" in err([p], tmp_path, molecule="protein")


# ------------------------------------------------------------------ errors


def test_error_empty_record_fasta(tmp_path):
    p = tmp_path / "a.fasta"
    p.write_text(">s1\nACGU\n>s2 no sequence\n>s3\nACGU\n")
    msg = err([p], tmp_path)
    assert str(p) in msg and "record 2" in msg and "'s2'" in msg and "empty record" in msg


def test_error_empty_last_record_fasta(tmp_path):
    p = tmp_path / "a.fasta"
    p.write_text(">s1\nACGU\n>s2\n")
    assert "record 2" in err([p], tmp_path)


def test_error_empty_cell_csv(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("id,sequence\nx,ACGU\ny,\n")
    msg = err([p], tmp_path)
    assert str(p) in msg and "record 2" in msg and "'y'" in msg and "empty record" in msg


def test_error_null_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    p = tmp_path / "a.parquet"
    pq.write_table(pa.table({"sequence": ["ACGU", None, "GG"]}), p)
    msg = err([p], tmp_path)
    assert str(p) in msg and "record 2" in msg and "empty record" in msg


def test_error_bad_character(tmp_path):
    p = tmp_path / "a.fasta"
    p.write_text(">s1 d\nACGU\n>s2 d\nACGU\nACEU\n")
    msg = err([p], tmp_path)
    assert str(p) in msg and "record 2" in msg and "'s2'" in msg
    assert "invalid character 'E' at position 7" in msg and "A C G U" in msg


def test_error_bad_character_csv(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("id,sequence\nx,ACGU\ny,AC-GU\n")
    msg = err([p], tmp_path)
    assert "record 2" in msg and "'y'" in msg and "'-' at position 3" in msg


def test_error_missing_file(tmp_path):
    msg = err([tmp_path / "nope.fasta"], tmp_path)
    assert str(tmp_path / "nope.fasta") in msg and "not found" in msg


@pytest.mark.parametrize("name", ["a.fasta.gz", "a.csv.gz"])
def test_error_truncated_gzip(tmp_path, name):
    rng = np.random.default_rng(1)
    seqs = ["".join(rng.choice(list("ACGU"), size=200)) for _ in range(3000)]
    ids = [f"r{i}" for i in range(3000)]
    text = fasta_text(ids, seqs) if "fasta" in name else _csv(ids, seqs)
    data = gzip.compress(text.encode())
    p = tmp_path / name
    p.write_bytes(data[: len(data) // 2])
    msg = err([p], tmp_path)
    assert str(p) in msg and "truncated" in msg.lower()


def test_error_not_gzip(tmp_path):
    p = tmp_path / "a.fasta.gz"
    p.write_text(fasta_text(IDS, SEQS))
    msg = err([p], tmp_path)
    assert str(p) in msg and "gzip" in msg


def test_error_gzip_without_gz_name(tmp_path):
    p = tmp_path / "a.fasta"
    p.write_bytes(gzip.compress(fasta_text(IDS, SEQS).encode()))
    assert "rename" in err([p], tmp_path)


def test_error_missing_column(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text(_csv(IDS, SEQS))
    msg = err([p], tmp_path, column="seq")
    assert str(p) in msg and "column 'seq' not found" in msg
    assert "available columns: id, sequence, structure" in msg and "--column" in msg
    msg = err([p], tmp_path, id_column="name")
    assert "id column 'name' not found" in msg


def test_error_missing_column_parquet_hf(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    datasets = pytest.importorskip("datasets")

    p = tmp_path / "a.parquet"
    pq.write_table(pa.table({"id": IDS, "seq": SEQS}), p)
    assert "available columns: id, seq" in err([p], tmp_path)
    d = tmp_path / "hf"
    datasets.Dataset.from_dict({"id": IDS, "seq": SEQS}).save_to_disk(str(d))
    msg = err([d], tmp_path)
    assert str(d) in msg and "available columns: id, seq" in msg


def test_error_data_before_header(tmp_path):
    p = tmp_path / "a.fasta"
    p.write_text("\nACGU\n>s1\nACGU\n")
    msg = err([p], tmp_path)
    assert str(p) in msg and "before the first '>'" in msg and "line 2" in msg


@pytest.mark.parametrize("name,text", [("a.fasta", ""), ("b.fasta", "\n\n"), ("c.csv", ""),
                                       ("d.csv", "id,sequence\n"), ("e.tsv", "id\tsequence\n")])
def test_error_empty_file(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    msg = err([p], tmp_path)
    assert str(p) in msg and "empty input file" in msg


def test_error_unknown_extension(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text(">a\nACGU\n")
    msg = err([p], tmp_path)
    assert str(p) in msg and "unknown input format" in msg and ".fasta" in msg


def test_error_second_file_names_it(tmp_path):
    a = tmp_path / "a.fasta"
    a.write_text(">a\nACGU\n")
    b = tmp_path / "b.fasta"
    b.write_text(">b1\nACGU\n>b2\nACXU\n")
    msg = err([a, b], tmp_path)
    assert str(b) in msg and "record 2" in msg and "'b2'" in msg


# ------------------------------------------------------------------ cache


def test_reopen_and_stale_cache(tmp_path):
    p = tmp_path / "a.fasta"
    p.write_text(fasta_text(IDS, SEQS))
    cache = tmp_path / "cache"
    c1 = load_corpus([p], "rna", cache)
    check(c1)
    built = (cache / "corpus.json").stat().st_mtime_ns
    c2 = load_corpus([str(p)], "rna", cache)  # same inputs: reopened, not rebuilt
    check(c2)
    assert (cache / "corpus.json").stat().st_mtime_ns == built
    check(Corpus.open(cache))
    with pytest.raises(CorpusError, match="different inputs.*molecule"):
        load_corpus([p], "protein", cache)
    with pytest.raises(CorpusError, match="different inputs.*column"):
        load_corpus([p], "rna", cache, column="seq")
    q = tmp_path / "b.fasta"
    q.write_text(fasta_text(IDS, SEQS))
    with pytest.raises(CorpusError, match="different inputs.*inputs were"):
        load_corpus([p, q], "rna", cache)
    # the input changes: a stale cache is an error, never reused
    p.write_text(fasta_text(IDS + ["s5"], SEQS + ["GGGG"]))
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(CorpusError) as e:
        load_corpus([p], "rna", cache)
    msg = str(e.value)
    assert str(cache) in msg and str(p) in msg and "changed" in msg and "delete" in msg
    # an explicit build over a non-empty cache dir needs overwrite
    with pytest.raises(CorpusError, match="not empty"):
        Corpus.build([p], "rna", cache)
    c3 = Corpus.build([p], "rna", cache, overwrite=True)
    assert len(c3) == 5 and c3.sequence(4) == "GGGG"
    assert load_corpus([p], "rna", cache).record_id(4) == "s5"


def test_open_missing_or_corrupt(tmp_path):
    with pytest.raises(CorpusError, match="corpus.json missing"):
        Corpus.open(tmp_path)
    p = tmp_path / "a.fasta"
    p.write_text(fasta_text(IDS, SEQS))
    build([p], tmp_path)
    with open(tmp_path / "cache" / "offsets.i64", "ab") as f:
        f.write(b"\0" * 8)
    with pytest.raises(CorpusError, match="corrupt"):
        Corpus.open(tmp_path / "cache")


def test_write_fasta_roundtrip(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text(_csv(IDS, SEQS))
    c = build([p], tmp_path)
    out = tmp_path / "out" / "coreset.fasta"
    assert c.write_fasta(np.array([3, 0, 2]), out, line_width=10) == 3
    text = out.read_text()
    assert text.startswith(">s4 index=3\nA\n>s1 index=0\nACGUACGUAG\n")
    c2 = build([out], tmp_path, name="c2")
    check(c2, ["s4", "s1", "s3"], [SEQS[3], SEQS[0], SEQS[2]])
    assert not [f for f in out.parent.iterdir() if f.name.endswith(".tmp")]


# ------------------------------------------------------------------ real sample data


def test_real_rna_corpus(tmp_path):
    d = data_dir() / "rna"
    if not all((d / f).exists() for f in RNA_FILES):
        pytest.skip(f"RNA sample data not found at {d} (set BIOPRUNE_DATA to the shared data dir)")
    paths = [d / f for f in RNA_FILES]
    t = time.perf_counter()
    c = load_corpus(paths, "rna", tmp_path / "rna")
    elapsed = time.perf_counter() - t
    assert [f["records"] for f in c.stats["inputs"]] == list(RNA_FILES.values())
    assert len(c) == sum(RNA_FILES.values()) == 16287
    # bprna_nf15 contains a few IUPAC ambiguity codes (N, R, Y, M, W)
    bp = c.stats["inputs"][1]["ambiguity_codes"]
    assert set("NRYMW") <= set(bp) and all(v > 0 for v in bp.values())
    assert c.stats["ambiguity_codes"]["N"] >= bp["N"]
    assert c.record_id(0) == "16s_A.fulgidus"
    assert c.source(3975) == (str(d / "bprna_nf15.csv"), 1)
    assert c.record_id(3975 + 8788) == "URS00008314B2"
    assert c.source(len(c) - 1) == (str(d / "rfam_RF00010.fasta"), 458)
    lengths = np.asarray(c.lengths)
    assert c.stats["length"]["min"] == lengths.min() and c.stats["length"]["max"] == lengths.max()
    assert c.stats["length"]["median"] == float(np.median(lengths))
    assert set(np.unique(c.residues_flat)) <= set(b"ACGURYKMSWBDHVN")
    assert elapsed < 30


# ------------------------------------------------------------------ distributed load_corpus


def _rank_main(rank, world, init_file, paths, cache, out):
    import torch.distributed as dist

    from bioprune.engine.data.corpus import CorpusError, load_corpus

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    res = []
    for molecule in ("rna", "protein"):  # build + open, then a stale request
        try:
            c = load_corpus(paths, molecule, cache)
            res.append(f"ok {len(c)} {c.sequence(len(c) - 1)}")
        except CorpusError as e:
            res.append(f"error {e}")
    dist.barrier()
    dist.destroy_process_group()
    Path(out).write_text("\n".join(res))


@pytest.mark.slow
@pytest.mark.multirank
@pytest.mark.subprocess
def test_load_corpus_two_ranks(tmp_path):
    """Both ranks build (each its share); both open the same corpus; a stale cache errors on
    every rank (no rank hangs at the barrier)."""
    p = tmp_path / "a.fasta"
    p.write_text(fasta_text(IDS, SEQS))
    outs = spawn_ranks(_rank_main, ([str(p)], str(tmp_path / "cache")), tmp_path)
    for o in outs:
        built, stale = o.read_text().split("\n")
        assert built == f"ok 4 {SEQS[3]}"
        assert stale.startswith("error") and "different inputs" in stale


def test_first_bad_record_is_reported(tmp_path):
    p = tmp_path / "a.fasta"
    p.write_text(">ok\nACGU\n>empty\n>bad\nACXU\n")
    msg = err([p], tmp_path)
    assert "record 2" in msg and "'empty'" in msg and "empty record" in msg
    q = tmp_path / "b.faa"
    q.write_text(">ok\nMKV\n>star\nM*K\n>empty\n*\n")
    msg = err([q], tmp_path, molecule="protein")
    assert "record 2" in msg and "'star'" in msg and "position 2" in msg


def test_record_numbers_across_batches(tmp_path):
    seqs = ["ACGU" * 20] * 4000
    seqs[2999] = "ACGU" * 10 + "Q"
    ids = [f"r{i + 1}" for i in range(4000)]
    p = tmp_path / "a.fasta"
    p.write_text(fasta_text(ids, seqs))
    msg = err([p], tmp_path, chunk_bytes=1000)
    assert "record 3000 (id 'r3000')" in msg and "'Q' at position 41" in msg
    q = tmp_path / "a.csv"
    q.write_text(_csv(ids, seqs))
    msg = err([q], tmp_path, chunk_bytes=1 << 16)
    assert "record 3000 (id 'r3000')" in msg
    r = tmp_path / "a.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ids, "sequence": seqs}), r, row_group_size=700)
    assert "record 3000 (id 'r3000')" in err([r], tmp_path, batch_rows=512)
