"""Process-level plumbing every stage uses: joining and leaving the process group (``distributed``),
collectives on NumPy arrays with one "fail together" helper (``collectives``), the counter-based
hash that makes every random decision a pure function of (seed, corpus index) (``hashing``),
starting entry points as processes with free ports (``launching``), the allocator's mmap policy
(``malloc``), usage errors (``errors``), rank-agreed checks (``validate``), settings fields
that declare their flag, check and run-identity decision once (``flags``; the flags several stages
share in ``run_flags``), ZeRO-3 placement
and memory accounting (``zero3``), the ``--out`` lock (``lock``) and the exact index checks
(``index_check``). Imports nothing else from bioprune."""
