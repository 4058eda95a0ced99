"""Masked-LM training on DeepSpeed (DESIGN steps 1 and 5): settings and the engine, the training
loop, the export, and the pretrain-on-a-coreset pipeline. May import ``runtime``, ``io``,
``data`` and ``models``."""
