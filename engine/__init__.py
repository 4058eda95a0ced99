"""bioprune.engine: the pipeline, one subpackage per stage.

    runtime ─► io ─► data ─► models ─► influence ─┐
                                     selection ───┼─► evaluation ─► experiments
                                     training ────┘

A package may import the ones to its left (and ``bioprune.kernels``), never one to its right;
``cli`` (argument groups shared by the launchers) sits above all of them.
"""
