"""Sequences in: residue alphabets, streaming readers of FASTA/CSV/TSV/Parquet/HF inputs (the
format readers, and ``read_input`` over them), the corpus (the ``corpus`` package: one build in
which every rank, or the one process, scans its share of the inputs; the cache's identity; the
memory-mapped store; ``load_corpus``), FASTA output (normalised, or chosen records copied
unchanged from the inputs: ``original_records``), deterministic crops and MLM masks
(``batching``), the hashed samples of corpus indices (D_sub, held-out) and record ids to corpus
positions (``record_ids``). May import ``runtime`` and ``io``; it talks to models only through
the duck-typed ``ModelBundle`` fields."""
