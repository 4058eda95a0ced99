"""Sequences in: residue alphabets, streaming readers of FASTA/CSV/TSV/Parquet/HF inputs (the
format readers, and ``read_input`` over them), the corpus build (one process, or every rank its
share) and its memory-mapped store, FASTA output (normalised, or chosen records copied unchanged
from the inputs: ``original_records``), deterministic crops and MLM masks (``batching``), the
hashed samples of corpus indices (D_sub, held-out) and record ids to corpus positions
(``record_ids``). May import ``runtime`` and ``io``; it talks to models only through the
duck-typed ``ModelBundle`` fields."""
