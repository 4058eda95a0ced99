"""bioprune.engine: the pipeline, one subpackage per stage.

    runtime ─► io ─► data ─► models ─► training ─► influence ─► selection ─► evaluation

A package may import the ones to its left (and ``bioprune.kernels``), never one to its right;
``selection`` needs only ``runtime``, ``io`` and ``data``. ``cli`` (argument groups shared by the
launchers) sits above all of them. Each subpackage's docstring says what it owns.
"""
