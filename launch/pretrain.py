"""Pretrain a fresh model from scratch on a coreset (DESIGN step 5), on DeepSpeed with ZeRO.

    deepspeed launch/pretrain.py --data a.fasta --indices runs/x/cci/coreset.npy --out runs/x/pt
    python launch/pretrain.py --data a.fasta --all --out runs/full        # the whole corpus

The paper's schedule by default: AdamW lr 1e-4, weight decay 0.01, linear warm-up for 2,000
steps then inverse-square-root decay, 10 epochs, micro-batch 16. A fixed held-out sample of the
corpus (the same for every coreset drawn with the same --seed, and never trained on) gives the
MLM loss and perplexity after each epoch (metrics.csv and TensorBoard). Checkpoints are
DeepSpeed's; rerunning with the same --out resumes from the last checkpoint (an epoch's end, or
where an earlier --steps stopped). --steps N trains for exactly N optimizer steps whatever the
coreset size (compute-matched comparisons); rerunning with a larger --steps extends the run to the
same steps, data order and weights as an unbroken run of that length. The final
weights are exported as a plain state dict (final/model.safetensors).
"""
from __future__ import annotations

import sys

from bioprune.engine.cli import (add_deepspeed_args, add_hf_path_arg, main_of, model_inputs,
                                 settings_from_args, settings_parser)
from bioprune.engine.training.pipeline import PretrainSettings, run_pretraining


def parse_args(argv=None):
    p, groups = settings_parser(PretrainSettings, __doc__)  # every flag: a PretrainSettings field
    add_hf_path_arg(groups)
    add_deepspeed_args(p, groups)
    return p.parse_args(argv)


def run(args) -> int:
    run_pretraining(settings_from_args(PretrainSettings, args, **vars(model_inputs(args))))
    return 0


main = main_of(parse_args, run)

if __name__ == "__main__":
    sys.exit(main())
