"""The corpus build however the work is shared, against one process reading every input whole in
order, which is the reference: byte for byte the same arrays and ids, the same corpus.json (less
its "build" timings), the same rejected.tsv and the same error messages (file, record number
within the file, id) — with files cut into byte ranges mid-record and Parquet files cut between
row groups.

Ranks: one rank cutting its inputs into many units (in this process, many cases), two ranks
spawned like test_corpus's two-rank test (gloo, one spawn runs every case), and two ranks under
the real ``deepspeed`` launcher (the benchmark's worker)."""
from __future__ import annotations

import gzip
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest

from bioprune.engine.data.corpus import CorpusError, load_corpus
from bioprune.engine.data.corpus.units import plan_units
from bioprune.engine.data.read_input import iter_batches
from bioprune.engine.data.readers import resolve_input
from bioprune.engine.data.paths import data_dir

ARRAYS = ("residues.u8", "offsets.i64", "lengths.i32", "ids.u8", "id_offsets.i64")
RNA = ["archiveII.csv", "bprna_nf15.csv", "rnacentral_sample.fasta", "rfam_RF00001.fasta",
       "rfam_RF00005.fasta", "rfam_RF00010.fasta"]
SPLIT = {"min_unit_bytes": 1000}    # cut files of a few KB (the default keeps them whole)


# ----------------------------------------------------------------------------- inputs


def _fasta(records, rng, crlf=False) -> bytes:
    nl = "\r\n" if crlf else "\n"
    lines = []
    for rid, seq in records:
        lines.append(f">{rid}" + (" some description" if rng.random() < 0.5 else ""))
        w = rng.choice([7, 60, 1000])
        lines += [seq[k:k + w] for k in range(0, len(seq), w)]
    return (nl.join(lines) + nl).encode()


def _seqs(rng, n, bad=()):
    out = []
    for i in range(n):
        s = "".join(rng.choice("ACGUACGUACGUtTnN") for _ in range(rng.randint(20, 240)))
        if i in bad:
            s = "" if i % 3 == 0 else s[:5] + rng.choice("X-.") + s[5:]
        out.append(s)
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Synthetic inputs that the plan cuts (FASTA ranges, Parquet row groups) and that it keeps
    whole (gzip, CSV), plus bad ones; and the real RNA sample data when it is there."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path_factory.mktemp("inputs")
    rng = random.Random(7)
    f = {}
    # one big multi-line FASTA, some headers without an id ('> text': generated ids)
    seqs = _seqs(rng, 1500)
    ids = ["" if i % 37 == 5 else f"b{i}" for i in range(1500)]
    (d / "big.fasta").write_bytes(_fasta(zip(ids, seqs), rng))
    f["big"] = str(d / "big.fasta")
    (d / "crlf.fa").write_bytes(_fasta([(f"c{i}", s) for i, s in enumerate(_seqs(rng, 300))], rng,
                                       crlf=True))
    f["crlf"] = str(d / "crlf.fa")
    (d / "small.fa.gz").write_bytes(gzip.compress(_fasta(
        [(f"g{i}", s) for i, s in enumerate(_seqs(rng, 200))], rng)))
    f["gz"] = str(d / "small.fa.gz")
    rows = _seqs(rng, 1000)
    pq.write_table(pa.table({"sequence": rows}), d / "rows.parquet", row_group_size=90)
    f["pq"] = str(d / "rows.parquet")            # no id column: ids '<file>:<record number>'
    (d / "t.csv").write_text("id,sequence\n" + "".join(f"t{i},{s}\n" for i, s in
                                                      enumerate(_seqs(rng, 150))))
    f["csv"] = str(d / "t.csv")
    # bad records in both halves of a big file (records 17, 600, 1210, 1399 1-based)
    bad = {16, 599, 1209, 1398}
    (d / "bad.fasta").write_bytes(_fasta([(f"x{i + 1}", s) for i, s in
                                          enumerate(_seqs(rng, 1400, bad))], rng))
    f["bad"] = str(d / "bad.fasta")
    # 25 bad records: the error lists the first 20 (reading stops there)
    many = set(range(700, 1400, 28))
    (d / "many.fasta").write_bytes(_fasta([(f"m{i + 1}", s) for i, s in
                                           enumerate(_seqs(rng, 1400, many))], rng))
    f["many"] = str(d / "many.fasta")
    badpq = _seqs(rng, 800, {650})
    pq.write_table(pa.table({"id": [f"q{i + 1}" for i in range(800)], "sequence": badpq}),
                   d / "bad.parquet", row_group_size=100)
    f["badpq"] = str(d / "bad.parquet")
    (d / "empty.fasta").write_text("\n")
    f["empty"] = str(d / "empty.fasta")
    (d / "allbad.fasta").write_text(">a\nAXG\n>b\nU-U\n")
    f["allbad"] = str(d / "allbad.fasta")
    prot = "".join(f">p{i}\n{'MKVLA' * (i % 30 + 1)}{'*' if i % 4 == 0 else ''}\n"
                   for i in range(900))
    (d / "prot.faa").write_text(prot)
    f["prot"] = str(d / "prot.faa")
    rna = data_dir() / "rna"
    f["real"] = [str(rna / x) for x in RNA] if all((rna / x).exists() for x in RNA) else None
    return f


def _cases(f) -> dict:
    """name -> (paths, molecule, on_invalid)."""
    c = {
        "mix": ([f["big"], f["gz"], f["pq"], f["csv"], f["crlf"]], "rna", "error"),
        "bad_error": ([f["csv"], f["bad"]], "rna", "error"),
        "bad_skip": ([f["bad"], f["big"], f["badpq"]], "rna", "skip"),
        "badpq_error": ([f["big"], f["badpq"]], "rna", "error"),
        "many_error": ([f["big"], f["many"]], "rna", "error"),
        "empty_file": ([f["big"], f["empty"], f["csv"]], "rna", "error"),
        "all_bad_skip": ([f["big"], f["allbad"]], "rna", "skip"),
        "protein": ([f["prot"]], "protein", "error"),
    }
    if f["real"]:
        c["real"] = (f["real"], "rna", "error")
    return c


# ----------------------------------------------------------------------------- comparison


def snapshot(root: Path) -> dict:
    """Everything a build leaves that must not depend on how it was built."""
    meta = json.loads((root / "corpus.json").read_text())
    meta.pop("build")
    rej = root / "rejected.tsv"
    return {"meta": meta, "rejected": rej.read_bytes() if rej.exists() else None,
            **{fn: (root / fn).read_bytes() for fn in ARRAYS}}


def outcome(paths, molecule, cache: Path, on_invalid, **kw):
    try:
        return ("ok", snapshot(load_corpus(paths, molecule, cache, on_invalid=on_invalid,
                                           **kw).root))
    except CorpusError as e:
        return ("error", str(e))


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory):
    """Every case built by one rank reading each input whole, in order."""
    d = tmp_path_factory.mktemp("whole")
    return {name: outcome(paths, mol, d / name, inv)
            for name, (paths, mol, inv) in _cases(inputs).items()}


def test_reference_cases_mean_something(reference):
    """The cases reach what they are meant to: errors naming a record in the second half of a
    file, the 20-record cut-off, an empty and an all-bad input, and builds with rejected rows
    and generated ids."""
    assert reference["bad_error"][0] == "error"
    for rec in ("record 17 (id 'x17')", "record 600 (id 'x600')", "record 1210 (id 'x1210')",
                "record 1399 (id 'x1399')"):
        assert rec in reference["bad_error"][1]
    assert "record 651 (id 'q651')" in reference["badpq_error"][1]
    assert "at least 20 invalid records" in reference["many_error"][1]
    assert "record 1233 (id 'm1233')" in reference["many_error"][1]      # the 20th
    assert "empty input file" in reference["empty_file"][1]
    assert "all 2 records are invalid" in reference["all_bad_skip"][1]
    skip = reference["bad_skip"][1]
    assert skip["meta"]["rejected"] == 5 and skip["rejected"].count(b"\n") == 6
    mix = reference["mix"][1]
    assert b"b4big.fasta:6b6" in mix["ids.u8"]
    assert b"rows.parquet:1000" in mix["ids.u8"]
    assert reference["protein"][1]["meta"]["stripped_stops"] == 225


# ----------------------------------------------------------------------------- readers, plan


def _records(spec, byte_range=None, chunk=64):
    out = []
    for b in iter_batches(spec, chunk_bytes=chunk, byte_range=byte_range):
        out += [(b.record_id(j), bytes(b.data[b.offsets[j]:b.offsets[j + 1]]))
                for j in range(len(b))]
    return out


def test_fasta_byte_ranges_partition_the_records(tmp_path):
    """Cut anywhere (mid-header, mid-line, at a '>' inside a description), the ranges hold every
    record exactly once, in order; only the first sees a BOM or leading blank lines."""
    rng = random.Random(3)
    p = tmp_path / "f.fasta"
    for trial in range(100):
        lines = [""] if rng.random() < 0.3 else []
        for i in range(rng.randint(0, 25)):
            lines.append(">" + ("" if rng.random() < 0.1 else f"r{i}")
                         + (" d>x" if rng.random() < 0.3 else ""))
            lines += ["".join(rng.choice("ACGU>") for _ in range(rng.randint(0, 15)))
                      for _ in range(rng.randint(0, 4))]
        text = "\n".join(lines) + ("\n" if rng.random() < 0.7 else "")
        p.write_bytes(("\ufeff" if rng.random() < 0.2 else "").encode() + text.encode())
        spec = resolve_input(p)
        try:
            whole = _records(spec, chunk=1 << 20)
        except CorpusError:
            continue            # sequence data before the first header: the first range says so
        n = p.stat().st_size
        cuts = sorted({rng.randint(1, max(1, n - 1)) for _ in range(rng.randint(1, 6))} - {n})
        bounds = [0, *cuts, None]
        parts = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            parts += _records(spec, (a, b), chunk=rng.choice([3, 40, 1 << 20]))
        assert parts == whole, (trial, cuts)


def test_plan_cuts_big_files_and_keeps_others_whole(inputs):
    paths = [inputs["big"], inputs["gz"], inputs["pq"], inputs["csv"]]
    specs = [resolve_input(p) for p in paths]
    sizes = [os.path.getsize(p) for p in paths]
    units = plan_units(specs, sizes, 2, min_unit_bytes=1000)
    assert [u.index for u in units] == list(range(len(units)))
    assert [u.owner for u in units] == sorted(u.owner for u in units) and units[-1].owner == 1
    big = [u for u in units if u.file == 0]
    assert len(big) == 2 and big[0].byte_range[0] == 0 and big[1].byte_range[1] is None
    cut = big[1].byte_range[0]
    assert big[0].byte_range[1] == cut and big[1].record_base is None
    text = Path(inputs["big"]).read_bytes()
    assert text[cut - 1:cut + 1] != b"\n>"                  # mid-record: the reader resyncs
    assert {u.owner for u in big} == {0, 1}
    assert [u.byte_range or u.row_groups for u in units if u.file in (1, 3)] == [None, None]
    pq_units = [u for u in units if u.file == 2]
    # the Parquet file is cut between row groups; its record numbers are known in advance
    if len(pq_units) > 1:
        assert pq_units[1].record_base == 90 * pq_units[1].row_groups[0]
    # default unit size: small files stay whole
    assert all(u.byte_range is None and u.row_groups is None
               for u in plan_units(specs, sizes, 2))
    # many ranks, one file: every rank gets a range
    units = plan_units(specs[:1], sizes[:1], 5, min_unit_bytes=100)
    assert [u.owner for u in units] == [0, 1, 2, 3, 4]


# ----------------------------------------------------------------------------- one rank, many units


@pytest.mark.slow
def test_one_rank_many_units_equals_the_whole_inputs_build(inputs, reference, tmp_path):
    """One rank with every input cut into up to 9 units: plan, scan, merge, deferred ids and
    assembly (copied into place, not renamed, where ids wait for the exchange) give the
    reference bytes and errors."""
    for name, (paths, mol, inv) in _cases(inputs).items():
        got = outcome(paths, mol, tmp_path / name, inv,
                      build={"units_per_rank": 9, "chunk_bytes": 4096, **SPLIT})
        assert got == reference[name], name


def test_fuzz_one_rank_many_units(tmp_path):
    """Random inputs (FASTA/gzip/Parquet with and without ids/CSV, bad records, empty ids) and
    random unit sizes: the build equals the one of whole inputs, result or error."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(11)
    for trial in range(25):
        d = tmp_path / f"t{trial}"
        d.mkdir()
        paths = []
        pbad = rng.choice([0, 0.01, 0.2])
        for k in range(rng.randint(1, 3)):
            kind = rng.choice(["fa", "fa", "gz", "pq", "pqid", "csv"])
            n = rng.randint(0, 200)
            recs = [("" if rng.random() < 0.05 else f"r{k}_{i}",
                     _seqs(rng, 1, {0} if rng.random() < pbad else ())[0]) for i in range(n)]
            if kind in ("fa", "gz"):
                text = _fasta(recs, rng)
                p = d / f"f{k}.fa" if kind == "fa" else d / f"f{k}.fa.gz"
                p.write_bytes(text if kind == "fa" else gzip.compress(text))
            elif kind.startswith("pq"):
                p = d / f"f{k}.parquet"
                cols = {"sequence": [s for _, s in recs]}
                if kind == "pqid":
                    cols = {"id": [r for r, _ in recs], **cols}
                pq.write_table(pa.table(cols, schema=pa.schema([(c, pa.string()) for c in cols])),
                               p, row_group_size=rng.choice([7, 50]))
            else:
                p = d / f"f{k}.csv"
                p.write_text("id,sequence\n" + "".join(f"{r},{s}\n" for r, s in recs))
            paths.append(str(p))
        inv = rng.choice(["error", "skip"])
        want = outcome(paths, "rna", d / "whole", inv)
        got = outcome(paths, "rna", d / "par", inv,
                      build={"units_per_rank": rng.choice([2, 7]),
                             "min_unit_bytes": rng.choice([1, 300]), "chunk_bytes": 256})
        assert got == want, (trial, paths, inv)


# ----------------------------------------------------------------------------- two ranks


def _rank_main(rank, world, init_file, cases, work, out):
    """A spawned rank: every case built with small units, then the reuse of a
    built cache, a stale request, and a node-local build with simulated nodes."""
    import torch.distributed as dist

    from bioprune.engine.data.corpus import nodes

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    res = {}
    for name, (paths, mol, inv) in cases.items():
        got = outcome(paths, mol, Path(work) / name, inv, build=SPLIT)
        res[name] = got if got[0] == "error" else ("ok", {k: v.hex() if isinstance(v, bytes) else v
                                                           for k, v in got[1].items()})
    paths, mol, inv = cases["mix"]
    meta = Path(work) / "mix" / "corpus.json"
    before = meta.stat().st_mtime_ns
    load_corpus(paths, mol, Path(work) / "mix", build=SPLIT)           # reused, not rebuilt
    res["reused"] = meta.stat().st_mtime_ns == before
    res["stale"] = outcome(paths, "protein", Path(work) / "mix", inv)
    os.environ[nodes.SIMULATE_NODES_ENV] = "1"
    try:
        c = load_corpus(paths, mol, Path(work) / "local", node_local=True, build=SPLIT)
        res["local_root"] = str(c.root)
        res["local_nodes"] = c.stats["build"]["nodes"]
    finally:
        os.environ.pop(nodes.SIMULATE_NODES_ENV)
    dist.barrier()
    dist.destroy_process_group()
    Path(out).write_text(json.dumps(res))


def _decode(got):
    if got[0] == "error":
        return tuple(got)
    return ("ok", {k: bytes.fromhex(v) if k in ARRAYS or k == "rejected" and v is not None else v
                   for k, v in got[1].items()})


@pytest.mark.slow
@pytest.mark.multirank
@pytest.mark.subprocess
def test_two_ranks_equal_the_one_rank_build(inputs, reference, tmp_path):
    """Two gloo ranks, each scanning its share: every case gives the reference bytes and, on
    both ranks, the reference error; a built cache is reused, a stale one refused on both ranks;
    a node-local cache ends up complete on each (simulated) node."""
    from pipeline_utils import spawn_ranks

    cases = _cases(inputs)
    # the cases cut files across the ranks: the second half of bad.fasta (bad records 1210 and
    # 1399), of big.fasta (ids generated from record numbers) and of prot.faa go to rank 1
    for name, path in (("bad_error", inputs["bad"]), ("bad_skip", inputs["big"]),
                       ("protein", inputs["prot"])):
        paths = cases[name][0]
        units = plan_units([resolve_input(x) for x in paths],
                           [os.path.getsize(x) for x in paths], 2, **SPLIT)
        k = paths.index(path)
        assert [(u.owner, u.record_base is None) for u in units if u.file == k] == \
            [(0, False), (1, True)], name
    outs = spawn_ranks(_rank_main, (cases, str(tmp_path / "work")), tmp_path, timeout=300)
    res = [json.loads(o.read_text()) for o in outs]
    for name in cases:
        for r in range(2):
            assert _decode(res[r][name]) == reference[name], (name, r)
    assert res[0]["reused"] and res[1]["reused"]
    for r in range(2):
        assert res[r]["stale"][0] == "error" and "different inputs" in res[r]["stale"][1]
    work = tmp_path / "work"
    assert [res[r]["local_root"] for r in range(2)] == [str(work / "local@sim0"),
                                                        str(work / "local@sim1")]
    assert res[0]["local_nodes"] == 2
    for node in ("local@sim0", "local@sim1"):
        assert snapshot(work / node) == reference["mix"][1], node
    assert not [p for p in work.iterdir() if p.name.startswith(".")]     # no temporary left


@pytest.mark.slow
@pytest.mark.multirank
@pytest.mark.subprocess
def test_deepspeed_launcher_two_ranks(inputs, tmp_path):
    """The real launcher (deepspeed --num_gpus 2, gloo on CPU) through the benchmark's worker:
    the real RNA sample data cut across both ranks equals the one-rank build."""
    from pipeline_utils import run

    if not inputs["real"]:
        pytest.skip("no sample data")
    files = inputs["real"] + [inputs["big"]]
    want = outcome(files, "rna", tmp_path / "one", "error")
    out = tmp_path / "ranks.json"
    run("bench/corpus.py", ["--worker", "--data", *files, "--cache",
                            str(tmp_path / "par"), "--min-unit-bytes", "20000",
                            "--units-per-rank", "8", "--out", str(out)], ranks=2, timeout=300)
    recs = json.loads(out.read_text())
    assert [r["world"] for r in recs] == [2, 2] and not any("error" in r for r in recs)
    assert recs[0]["build"]["ranks"] == 2 and recs[0]["build"]["units"] > len(files)
    assert snapshot(tmp_path / "par") == want[1]
    lengths = np.fromfile(tmp_path / "par" / "lengths.i32", dtype="<i4")
    assert len(lengths) == recs[0]["records"] == recs[1]["records"]
