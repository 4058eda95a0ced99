"""The flags several stages' settings share, declared once here and used as
``setting(..., flag=OVERWRITE)``: how a run treats its run directory, and the DeepSpeed placement
(whether each is part of a run identity is decided by each stage's field, not here: ZeRO's stage
changes a pretrained model, not a score)."""
from __future__ import annotations

from bioprune.engine.runtime.flags import Flag

RUN_GROUP = "run directory and bad input"
DEEPSPEED_GROUP = "DeepSpeed"

OVERWRITE = Flag(
    action="store_true", group=RUN_GROUP,
    help="--out holds a run of other settings or inputs: start it afresh (its outputs are "
         "deleted; the corpus cache is kept) instead of refusing")

ZERO_STAGE = Flag(
    type=int, choices=(0, 1, 2, 3), group=DEEPSPEED_GROUP,
    help="ZeRO stage; picks ds_configs/<cpu|cuda>_zero<stage>_*.json unless --deepspeed_config "
         "is given. 3 partitions the model itself: it is built inside deepspeed.zero.Init and "
         "every pass (training, and in score.py the Fisher and the scores) gathers one layer at "
         "a time, so no rank holds the whole model, Fisher or weights; use it when the model does "
         "not fit one device")

OFFLOAD = Flag(
    choices=("none", "cpu"), group=DEEPSPEED_GROUP,
    help="with --zero-stage 3: keep the parameter and optimizer partitions in CPU memory "
         "(ZeRO-Infinity offload) and bring each layer to the GPU when it runs")

# added to the parser by deepspeed.add_config_arguments (with its help); a setting all the same
DEEPSPEED_CONFIG = Flag(names=("--deepspeed_config",), external=True)
