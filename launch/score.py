"""Score every sequence of a corpus by subset-based self-influence (DESIGN steps 1-3).

    deepspeed launch/score.py --data a.fasta b.csv --model rnafm --out runs/x      # a cluster
    python launch/score.py --data a.fasta --model rnafm --out runs/x               # one process

Steps: draw D_sub → adapt the model on it for --finetune-epochs (DeepSpeed, ZeRO) → diagonal
empirical Fisher over D_sub (summed across ranks) → I(z) = Σ_j g_zj² / (F_j + λ) for every
sequence, data-parallel in fixed chunks of corpus indices → the run directory of DESIGN.md.

Rerunning with the same --out resumes: the adapted model, the Fisher and every finished score
part are kept; only missing parts are scored.
"""
from __future__ import annotations

import argparse
import sys

from bioprune.engine.cli import (add_deepspeed_args, add_hf_path_arg, main_of, model_inputs,
                                 settings_from_args, settings_parser)
from bioprune.engine.influence.pipeline import run_scoring
from bioprune.engine.influence.settings import ScoreSettings


def parse_args(argv=None) -> argparse.Namespace:
    p, groups = settings_parser(ScoreSettings, __doc__)   # every flag: a field of ScoreSettings
    add_hf_path_arg(groups)
    add_deepspeed_args(p, groups)
    return p.parse_args(argv)


def run(args) -> int:
    run_scoring(settings_from_args(ScoreSettings, args, **vars(model_inputs(args))))
    return 0


main = main_of(parse_args, run)

if __name__ == "__main__":
    sys.exit(main())
