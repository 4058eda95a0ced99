"""The corpus: every input record, validated, normalised and memory-mapped.

A corpus is built once, in one streaming pass over its inputs by every rank, each its share (one
process is the one-rank case of the same code), into a cache directory; afterwards it is only
ever opened read-only (``Corpus.open``), memory-mapped.

Corpus index (DESIGN.md): the 0-based position of a record in the corpus — the inputs in the
order given, records in file order. Record numbers *within a file* (``source(i)``, error
messages, generated ids) are 1-based.

Inputs (see ``bioprune.engine.data.readers``): FASTA (.fasta/.fa/.fna/.faa, plain or .gz,
multi-line records; id = first word of the header), CSV (.csv[.gz]) / TSV (.tsv/.tab[.gz]) with
a header row, Parquet (.parquet/.pq), a directory saved by ``datasets.Dataset.save_to_disk``, or
``DIR::SPLIT`` for one split of a saved ``DatasetDict``. Tables take the sequence from
``column`` and the id from ``id_column``, else from an ``id`` column if there is one, else
``<file name>:<record number>``.

Cache directory layout (:mod:`.layout`; all little-endian, raw, no header; shapes from
``corpus.json``)::

    corpus.json       inputs (path, size, mtime), molecule, column, per-file counts, stats
    residues.u8       normalised residues of all records, concatenated (ASCII, uint8)
    offsets.i64       int64[n+1]: record i is residues[offsets[i]:offsets[i+1]]
    lengths.i32       int32[n]
    ids.u8            record ids (UTF-8), concatenated
    id_offsets.i64    int64[n+1]
    rejected.tsv      with --on-invalid skip: the records left out

Modules, in the order a build uses them: ``identity`` (whether a cache may be reused),
``units`` (the inputs cut into units, a run per rank), ``normalise`` (one batch validated and
normalised), ``generated_ids`` (``<file>:<record>`` ids), ``scan`` (a rank's units into its
shard), ``merge`` (the unit summaries into the corpus index, statistics and errors; ``stats``
and ``invalid`` hold corpus.json's numbers and the bad-record errors), ``assemble`` (shards into
the final files), ``nodes`` (filesystem groups, node-local caches), ``publish`` (the temporary
build directory and its atomic rename), ``build`` (the steps, collective), ``store`` (the
memory-mapped :class:`Corpus`) and ``load`` (:func:`load_corpus`: reuse or build, then open).
"""
from bioprune.engine.data.corpus.load import load_corpus
from bioprune.engine.data.corpus.store import Corpus
from bioprune.engine.data.readers import CorpusError

__all__ = [
    "Corpus",
    "CorpusError",
    "load_corpus",
]
