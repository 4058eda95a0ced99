"""Command-line pieces shared by the entry points in ``launch/``: argument groups, the help
formatter, flags → settings dataclasses, and ``main`` with the process group around it."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from bioprune.engine.runtime import flags


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


def add_settings_args(p: argparse.ArgumentParser, cls) -> dict:
    """Add the flags of every field of the settings dataclass ``cls`` (:mod:`runtime.flags`), in
    field order: argument groups by title as first met, mutually exclusive groups inside them.
    Returns the argument groups by title (None: the parser), for the flags that are no setting."""
    groups: dict = {None: p}
    exclusive: dict = {}
    for f, m in flags.declared(cls):
        for flag in m.flags:
            if flag.external:
                continue
            if flag.group not in groups:
                groups[flag.group] = p.add_argument_group(flag.group)
            where = groups[flag.group]
            ex = flag.exclusive_group
            if ex is not None:
                if ex.name not in exclusive:
                    exclusive[ex.name] = where.add_mutually_exclusive_group(required=ex.required)
                where = exclusive[ex.name]
            where.add_argument(*flags.flag_names(f, flag), dest=f.name, **_argparse_kwargs(f, flag))
    return groups


def _argparse_kwargs(f, flag) -> dict:
    kw = {"help": flag.help}
    if flag.required:
        kw["required"] = True
    elif flags.default_of(f) is not dataclasses.MISSING:
        kw["default"] = flags.default_of(f)
    if flag.action is not None:
        kw["action"] = flag.action
        if flag.action == "store_const":
            kw["const"] = flag.const
        return kw
    for key in ("type", "choices", "nargs", "metavar"):
        if getattr(flag, key) is not None:
            kw[key] = getattr(flag, key)
    return kw


def add_hf_path_arg(groups: dict) -> None:
    """--hf-path DIR: another way to write --model hf:DIR (resolved by :func:`model_inputs`)."""
    groups["model"].add_argument(
        "--hf-path", default=None, metavar="DIR",
        help="with --model hf: a local Hugging Face model directory (config.json, tokenizer "
             "files, and weights unless it is to be trained from scratch)")


def add_local_rank_arg(p) -> None:
    p.add_argument("--local_rank", type=int, default=-1,
                   help="set by the deepspeed launcher; do not pass by hand")


def add_deepspeed_args(p: argparse.ArgumentParser, groups: dict) -> None:
    """--local_rank into the settings' DeepSpeed group, then DeepSpeed's own flags (among them
    --deepspeed_config, a setting declared as ``external``)."""
    add_local_rank_arg(groups["DeepSpeed"])
    import deepspeed

    deepspeed.add_config_arguments(p)


def settings_parser(cls, description: str) -> tuple[argparse.ArgumentParser, dict]:
    """A launcher's parser with the flags of ``cls``; returns it and its argument groups."""
    p = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    return p, add_settings_args(p, cls)


def resolve(path: str | None) -> Path | None:
    return None if path is None else Path(path).expanduser().absolute()


def settings_from_args(cls, args: argparse.Namespace, **overrides):
    """Build the settings dataclass ``cls`` from the parsed flags of the same names."""
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
