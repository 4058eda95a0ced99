"""Which molecule an input holds, from its first records: nucleotides (RNA/DNA: almost only
A C G T U N) or protein. Used at start-up to refuse RNA given to a protein model (ESM-C would
read U as selenocysteine and score it without a word) and protein given to an RNA model;
``--molecule`` overrides the guess."""
from __future__ import annotations

import numpy as np

from bioprune.engine.data.read_input import iter_batches
from bioprune.engine.data.readers import CorpusError, resolve_input

NUCLEOTIDE = b"ACGTUNacgtun"
# letters that are residues of protein but neither a nucleotide nor an IUPAC nucleotide code
PROTEIN_ONLY = b"EFILPQJOZXefilpqjozx"
SAMPLE_RECORDS = 200


def sniff(path: str, column: str = "sequence", id_column=None) -> dict | None:
    """{"molecule": "rna"|"protein", "letters", "nucleotide_share", "protein_only_share",
    "records"} from the first records of one input, or None when it holds too few letters
    to tell (or cannot be read: the corpus build reports that)."""
    try:
        spec = resolve_input(path)
        batch = next(iter_batches(spec, column, id_column, chunk_bytes=1 << 16,
                                  batch_rows=SAMPLE_RECORDS), None)
    except (CorpusError, OSError, StopIteration):
        return None
    if batch is None or len(batch) == 0:
        return None
    n = min(len(batch), SAMPLE_RECORDS)
    data = np.asarray(batch.data[:batch.offsets[n]])
    letters = data[((data >= 65) & (data <= 90)) | ((data >= 97) & (data <= 122))]
    if len(letters) < 20:
        return None
    counts = np.bincount(letters, minlength=256)
    nuc = counts[np.frombuffer(NUCLEOTIDE, np.uint8)].sum() / len(letters)
    prot = counts[np.frombuffer(PROTEIN_ONLY, np.uint8)].sum() / len(letters)
    molecule = "rna" if nuc >= 0.9 and prot < 0.02 else ("protein" if prot >= 0.02 or nuc < 0.6
                                                         else None)
    if molecule is None:
        return None
    return {"molecule": molecule, "letters": int(len(letters)), "records": n,
            "nucleotide_share": float(nuc), "protein_only_share": float(prot)}
