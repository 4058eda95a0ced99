"""Command-line pieces shared by the entry points in ``launch/``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .models import MODEL_NAMES, SIZES


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("corpus")
    g.add_argument("--data", nargs="+", required=True, metavar="PATH",
                   help="input files, concatenated in this order into one corpus: FASTA "
                        "(.fasta/.fa/.fna/.faa, optionally .gz), CSV/TSV (optionally .gz), Parquet, "
                        "or a Hugging Face dataset saved to disk (DIR, or DIR::SPLIT)")
    g.add_argument("--column", default="sequence",
                   help="the sequence column of CSV/TSV/Parquet/datasets inputs")
    g.add_argument("--id-column", default=None,
                   help="the record-id column of table inputs (default: 'id' if present)")
    g.add_argument("--corpus-cache", default=None, metavar="DIR",
                   help="where the memory-mapped corpus is built (default: OUT/corpus); reused "
                        "when the inputs are unchanged")
    g.add_argument("--max-length", type=int, default=1022,
                   help="longest sequence in residues; longer ones are cropped to a window "
                        "fixed by (seed, corpus index) and counted in the manifest")


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=MODEL_NAMES, default="rnafm",
                   help="rnafm: fm.BioBertModel (RNA); esmc: esm.models.esmc.ESMC (protein)")
    sizes = "; ".join(f"{m}: {', '.join(s)}" for m, s in SIZES.items())
    g.add_argument("--model-size", default="tiny", help=f"architecture size ({sizes})")
    g.add_argument("--checkpoint", default=None, metavar="FILE",
                   help="local weights: a state dict (.safetensors/.pt) or the released "
                        "RNA-FM_pretrained.pth; nothing is ever downloaded")


def add_deepspeed_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("DeepSpeed")
    g.add_argument("--zero-stage", type=int, choices=(0, 1, 2, 3), default=2,
                   help="ZeRO stage; picks ds_configs/<cpu|cuda>_zero<stage>_*.json unless "
                        "--deepspeed_config is given")
    g.add_argument("--local_rank", type=int, default=-1,
                   help="set by the deepspeed launcher; do not pass by hand")
    import deepspeed

    deepspeed.add_config_arguments(p)


def fail(message: str, code: int = 2) -> "NoReturn":  # noqa: F821
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def resolve(path: str | None) -> Path | None:
    return None if path is None else Path(path).expanduser().absolute()
