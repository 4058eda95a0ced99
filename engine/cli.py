"""Command-line pieces shared by the entry points in ``launch/``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from bioprune.engine.models import MODEL_NAMES, SIZES


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
    g.add_argument("--max-length", type=int, default=None,
                   help="longest sequence in residues (default: the model's, 1022 for rnafm, "
                        "2046 for esmc); longer ones are cropped to a window fixed by "
                        "(seed, corpus index) and counted in the manifest")


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


def fail(message: str, code: int = 2) -> NoReturn:
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def resolve(path: str | None) -> Path | None:
    return None if path is None else Path(path).expanduser().absolute()


def run_distributed(run, args) -> int:
    """Join the process group (if launched by deepspeed), run, and always leave it cleanly."""
    from bioprune.engine.runtime import distributed

    rank, world = distributed.init()
    try:
        return run(args, rank, world)
    finally:
        distributed.finalize()


def model_and_corpus(args, out: Path):
    """The model of --model/--model-size/--checkpoint (seeded: a fresh model initialises the
    same on every rank and every run) and the corpus of --data; returns (bundle, corpus, cache
    dir, residues kept per sequence)."""
    import torch

    from bioprune.engine.data.corpus import CorpusError, load_corpus
    from bioprune.engine.models import build_model

    torch.manual_seed(args.seed)
    bundle = build_model(args.model, args.model_size, args.checkpoint)
    cache = resolve(args.corpus_cache) or out / "corpus"
    try:
        corpus = load_corpus(args.data, bundle.molecule, cache, column=args.column,
                             id_column=args.id_column)
    except CorpusError as e:
        fail(str(e))
    max_res = min(args.max_length or bundle.max_residues, bundle.max_residues)
    return bundle, corpus, cache, max_res
