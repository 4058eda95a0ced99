"""Command-line pieces shared by the entry points in ``launch/``: argument groups, the help
formatter, flags → settings dataclasses, and ``main`` with the process group around it."""
from __future__ import annotations

import argparse
from pathlib import Path

from bioprune.engine.models import MODEL_NAMES, SIZES


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's layout; shows '(default: X)' for options whose help does not
    already state their default."""

    def _get_help_string(self, action):
        h = action.help or ""
        d = action.default
        if ("default" not in h and d is not None and d is not False and d != argparse.SUPPRESS
                and action.option_strings):
            h += " (default: %(default)s)"
        return h


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("corpus")
    g.add_argument("--data", nargs="+", required=True, metavar="PATH",
                   help="input files, concatenated in this order into one corpus: FASTA "
                        "(.fasta/.fa/.fna/.faa, optionally .gz), CSV/TSV (optionally .gz), "
                        "Parquet, or a Hugging Face dataset saved to disk (DIR, or DIR::SPLIT)")
    g.add_argument("--column", default="sequence",
                   help="the sequence column of CSV/TSV/Parquet/datasets inputs")
    g.add_argument("--id-column", default=None,
                   help="the record-id column of table inputs (default: 'id' if present)")
    g.add_argument("--corpus-cache", default=None, metavar="DIR",
                   help="where the memory-mapped corpus is built (default: OUT/corpus); reused "
                        "when the inputs are unchanged")
    g.add_argument("--corpus-cache-local", default=None, metavar="DIR",
                   help="instead of --corpus-cache, for clusters without a fast shared "
                        "filesystem: a directory on each node's own disk (the same path on every "
                        "node); all ranks build the corpus together and every node gets a "
                        "complete copy there (the nodes exchange their shares over the process "
                        "group). The inputs must be readable at their paths from every node")
    g.add_argument("--max-length", type=int, default=None,
                   help="longest sequence in residues (default: the model's, 1022 for rnafm, "
                        "2046 for esmc); longer ones are cropped to a window fixed by "
                        "(seed, corpus index) and counted in the manifest")


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", type=_model_name, default="rnafm",
                   metavar="{" + ",".join(MODEL_NAMES) + "}",
                   help="rnafm: fm.BioBertModel (RNA); esmc: esm.models.esmc.ESMC (protein); "
                        "esm2: Hugging Face EsmForMaskedLM with the published ESM-2 "
                        "architectures (protein); hf: any local AutoModelForMaskedLM directory "
                        "(give --hf-path DIR, or write --model hf:DIR)")
    sizes = "; ".join(f"{m}: {', '.join(s)}" for m, s in SIZES.items())
    g.add_argument("--model-size", default="tiny", help=f"architecture size ({sizes})")
    g.add_argument("--hf-path", default=None, metavar="DIR",
                   help="with --model hf: a local Hugging Face model directory (config.json, "
                        "tokenizer files, and weights unless it is to be trained from scratch)")
    g.add_argument("--checkpoint", default=None, metavar="FILE",
                   help="local weights: a state dict (.safetensors/.pt) or the released "
                        "RNA-FM_pretrained.pth; nothing is ever downloaded")


def add_run_args(p: argparse.ArgumentParser, inputs: bool = True) -> None:
    """--overwrite (every launcher); --molecule and --on-invalid (launchers that read --data)."""
    g = p.add_argument_group("run directory and bad input")
    g.add_argument("--overwrite", action="store_true",
                   help="--out holds a run of other settings or inputs: start it afresh (its "
                        "outputs are deleted; the corpus cache is kept) instead of refusing")
    if not inputs:
        return
    g.add_argument("--molecule", choices=("rna", "protein"), default=None,
                   help="what --data holds; default: guessed from the first records and "
                        "refused when it is not what --model reads (RNA given to esmc)")
    g.add_argument("--on-invalid", choices=("error", "skip"), default="error",
                   help="records with characters outside the alphabet, or empty: 'error' lists "
                        "the first 20 (file, record, id, what) and stops; 'skip' drops them, "
                        "lists them in OUT/rejected.tsv and counts them in the manifest (the "
                        "corpus index then runs over the kept records)")


def add_report_arg(p: argparse.ArgumentParser, what: str) -> None:
    """--report-to: where the training curves of ``what`` go (training.trackers)."""
    from bioprune.engine.training.trackers import BACKENDS

    p.add_argument("--report-to", choices=BACKENDS, default="tensorboard",
                   help=f"where the curves of {what} go (train loss and learning rate per "
                        "optimizer step, the per-epoch metrics), written by rank 0 under --out: "
                        "tensorboard: OUT/tensorboard/<stage>/ event files; wandb: an offline "
                        "run in OUT/wandb/ (upload later with `wandb sync`); mlflow: a local "
                        "file store OUT/mlruns (`mlflow ui --backend-store-uri file:OUT/mlruns`); "
                        "none. wandb and mlflow are optional (pip install wandb / mlflow). Not "
                        "part of the run's identity: a resume may change it "
                        "(default: tensorboard)")


def add_local_rank_arg(p) -> None:
    p.add_argument("--local_rank", type=int, default=-1,
                   help="set by the deepspeed launcher; do not pass by hand")


def add_deepspeed_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("DeepSpeed")
    g.add_argument("--zero-stage", type=int, choices=(0, 1, 2, 3), default=2,
                   help="ZeRO stage; picks ds_configs/<cpu|cuda>_zero<stage>_*.json unless "
                        "--deepspeed_config is given. 3 partitions the model itself: it is "
                        "built inside deepspeed.zero.Init and every pass (training, and in "
                        "score.py the Fisher and the scores) gathers one layer at a time, so "
                        "no rank holds the whole model, Fisher or weights; use it when the "
                        "model does not fit one device")
    g.add_argument("--offload", choices=("none", "cpu"), default="none",
                   help="with --zero-stage 3: keep the parameter and optimizer partitions in "
                        "CPU memory (ZeRO-Infinity offload) and bring each layer to the GPU "
                        "when it runs")
    add_local_rank_arg(g)
    import deepspeed

    deepspeed.add_config_arguments(p)


def _model_name(value: str) -> str:
    if value in MODEL_NAMES or value.startswith("hf:"):
        return value
    raise argparse.ArgumentTypeError(f"unknown model {value!r}; choose one of "
                                     f"{', '.join(MODEL_NAMES)} (hf:DIR for a local directory)")


def resolve(path: str | None) -> Path | None:
    return None if path is None else Path(path).expanduser().absolute()


def settings_from_args(cls, args: argparse.Namespace, **overrides):
    """Build the settings dataclass ``cls`` from the parsed flags of the same names."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(args).items() if k in names}
    values.update(overrides)
    return cls(**values)


def model_inputs(args: argparse.Namespace):
    """The ``--data``/``--model`` flags as a :class:`ModelInputs` (paths made absolute)."""
    from bioprune.engine.models.inputs import ModelInputs

    data = [str(resolve(d)) if "::" not in d else d for d in args.data]
    model, size = args.model, args.model_size
    if model.startswith("hf:"):
        model, size = "hf", model[3:]
    if getattr(args, "hf_path", None):
        model, size = "hf", args.hf_path
    if model == "hf":
        if size == "tiny":   # the default size: no directory was given
            from bioprune.engine.runtime.errors import fail

            fail("--model hf needs --hf-path DIR (a local Hugging Face model directory)")
        size = str(resolve(size))
    return settings_from_args(ModelInputs, args, data=data, model=model, model_size=size)


def main_of(parse_args, run):
    """``main(argv)`` of a launcher: parse the flags, then ``run(args)`` inside the process group
    (user mistakes: one line ``error: ...``, exit code 2)."""
    from bioprune.engine.runtime.distributed import run_distributed

    def main(argv=None) -> int:
        args = parse_args(argv)
        return run_distributed(run, args, out=getattr(args, "out", None))

    return main
