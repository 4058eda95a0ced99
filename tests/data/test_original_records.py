"""coreset.fasta's records as the user gave them (engine/data/original_records.py): headers and
residues byte for byte from FASTA (plain, gzip, CRLF, a byte-order mark, descriptions,
lowercase and T), table rows as '>id' + the cell, records dropped by --on-invalid skip counted
out, and an input changed since the corpus was built named instead of written wrong."""
from __future__ import annotations

import gzip
import io
import os
import re

import numpy as np
import pytest
from Bio import SeqIO

from bioprune.engine.data.corpus import load_corpus
from bioprune.engine.data.original_records import _record_numbers, write_original_fasta
from bioprune.engine.data.readers import CorpusError

FASTA = (b"\xef\xbb\xbf\n"
         b">URS0001 Homo sapiens tRNA-Gly (GCC)\r\nacgtACGT\r\nggcc\r\n"
         b">URS0002\nGGGGAUUU\n\n"
         b">URS0003 rRNA from 13 species; lowercase and T\nuuaaTTcc\nccgg\nAT\n"
         b">URS0004 last record, no final newline\nACGUN")
GZ = b">s1 first of the gzip\nACGU\n>s2 second\nacgt\nnnAC\n>s3\nGGG\n"
CSV = "id,sequence\nt1,acgT\nt2,GGGA\nt3,uuCCn\n"


def raw_records(data: bytes) -> list[bytes]:
    """A FASTA file's records as its bytes: from each header's '>' up to the next header."""
    text = data.removeprefix(b"\xef\xbb\xbf").lstrip(b"\n")
    return re.split(rb"(?<=\n)(?=>)", text)


@pytest.fixture
def inputs(tmp_path):
    fa, gz, csv = tmp_path / "a.fasta", tmp_path / "b.fa.gz", tmp_path / "c.csv"
    fa.write_bytes(FASTA)
    with gzip.open(gz, "wb") as g:
        g.write(GZ)
    csv.write_text(CSV)
    return [str(fa), str(gz), str(csv)]


def test_records_keep_header_and_residues_byte_for_byte(inputs, tmp_path):
    corpus = load_corpus(inputs, "rna", tmp_path / "cache")
    assert len(corpus) == 10 and corpus.sequence(0) == "ACGUACGUGGCC"   # normalised inside
    out = tmp_path / "coreset.fasta"
    chosen = [0, 2, 3, 5, 8]
    assert write_original_fasta(corpus, chosen, out) == 5
    got = out.read_bytes()
    want = raw_records(FASTA)
    gz = raw_records(GZ)
    # the input's bytes, each record ending in a newline (the last record of a.fasta had none)
    assert got == want[0] + want[2] + want[3] + b"\n" + gz[1] + b">t2\nGGGA\n"
    # what a FASTA reader sees: the same ids, descriptions and residues (case, T) as the input
    mine = list(SeqIO.parse(io.StringIO(got.decode()), "fasta"))
    theirs = list(SeqIO.parse(io.StringIO(FASTA.decode("utf-8-sig").lstrip()), "fasta"))
    theirs += list(SeqIO.parse(io.StringIO(GZ.decode()), "fasta"))
    for rec, i in zip(mine[:4], chosen):
        src = theirs[i]
        assert (rec.id, rec.description, str(rec.seq)) == (src.id, src.description, str(src.seq))
    assert str(mine[1].seq) == "uuaaTTccccggAT" and mine[0].description.endswith("(GCC)")
    assert (mine[4].id, str(mine[4].seq)) == ("t2", "GGGA")


def test_records_dropped_by_skip_are_counted_out(tmp_path):
    fa = tmp_path / "bad.fasta"
    fa.write_bytes(b">a ok\nACGU\n>b bad\nACXGU\n>c ok\nacg\n>d empty\n\n>e ok\nGGt\n")
    corpus = load_corpus([fa], "rna", tmp_path / "cache", on_invalid="skip")
    assert [corpus.record_id(i) for i in range(len(corpus))] == ["a", "c", "e"]
    write_original_fasta(corpus, [1, 2], tmp_path / "out.fasta")
    assert (tmp_path / "out.fasta").read_bytes() == b">c ok\nacg\n>e ok\nGGt\n"


def test_record_numbers_skip_the_rejected_ones():
    # rejected records 2, 3 and 7 of the file: kept positions 0.. are records 1, 4, 5, 6, 8, 9
    got = _record_numbers(np.arange(6), np.array([2, 3, 7]))
    assert got.tolist() == [1, 4, 5, 6, 8, 9]
    assert _record_numbers(np.arange(3), np.zeros(0, np.int64)).tolist() == [1, 2, 3]


def test_an_input_changed_since_the_build_is_named(inputs, tmp_path):
    corpus = load_corpus(inputs, "rna", tmp_path / "cache")
    fa = inputs[0]
    st = os.stat(fa)
    # one residue changed in place, size and mtime kept: found by the record check
    data = bytearray(FASTA)
    data[data.index(b"GGGGAUUU")] = ord("C")
    with open(fa, "r+b") as f:
        f.write(bytes(data))
    os.utime(fa, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(CorpusError) as e:
        write_original_fasta(corpus, [1], tmp_path / "x.fasta")
    msg = str(e.value)
    assert msg.startswith(fa) and "record 2 (id 'URS0002') is not the record the corpus" in msg
    assert not (tmp_path / "x.fasta").exists()            # nothing half-written
    # a record appended: size and mtime differ
    with open(fa, "ab") as f:
        f.write(b"\n>new\nACGU\n")
    with pytest.raises(CorpusError, match="changed since the corpus was built") as e:
        write_original_fasta(corpus, [0], tmp_path / "x.fasta")
    assert fa in str(e.value)
    # records of the other inputs are still copied
    assert write_original_fasta(corpus, [5], tmp_path / "y.fasta") == 1
