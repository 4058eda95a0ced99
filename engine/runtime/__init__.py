"""Process-level plumbing every stage uses: joining and leaving the process group (``distributed``),
collectives on NumPy arrays with one "fail together" helper (``collectives``), and the
counter-based hash that makes every random decision a pure function of (seed, corpus index)
(``hashing``). Imports nothing else from bioprune."""
