"""Masked-LM training on DeepSpeed (DESIGN steps 1 and 5): settings, the engine, the training
loop and the export (``loop``), the pretrain-on-a-coreset pipeline (``pipeline``) and its
argument checks (``checks``), and where the curves go (``trackers``: tensorboard, wandb,
mlflow). May import ``runtime``, ``io``, ``data`` and ``models``."""
