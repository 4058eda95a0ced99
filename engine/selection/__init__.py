"""Coreset selection (DESIGN step 4): the exact rules (``rules``), Top-I / CCI / Random over sharded
scores by distributed radix selection (``exact``, ``radix``, the passes' shared state in
``state``, CCI's strata and picks in ``cci``), cluster tables as files (``cluster_table``), the
MMseqs2 redundancy baseline and selection among cluster representatives (``cluster``), the
argument checks and the locked output unit (``checks``), the outputs (``report``), the console
summary (``summary``) and the select-from-a-run pipeline (``pipeline``). May import ``runtime``,
``io`` and ``data``."""
