"""Coreset selection (DESIGN step 4): the exact rules (``rules``), Top-I / CCI / Random over sharded
scores by distributed radix selection (``exact``, ``radix``), the outputs (``report``) and the
select-from-a-run pipeline. May import ``runtime``, ``io`` and ``data``."""
