"""A setting declared once: each field of a stage's settings dataclass carries its command-line
flag (name, help, type, choices, argument group, mutually exclusive group), its value check and
whether it belongs to the run identity (the settings a rerun must match to resume). Everything
else is generated from that one declaration: the launchers' argparse (:mod:`bioprune.engine.cli`),
the per-field start-up checks (:func:`check_fields`), the identity key lists
(:func:`identity_keys`) and the argv that reproduces a settings object (:func:`to_argv`, what the
study launches). The pattern of transformers' ``HfArgumentParser``, small enough to read.

    subset_size: int | None = setting(None, identity=True, check=at_least(1), flag=Flag(
        type=int, group="influence", exclusive="subset", help="M, the size of D_sub"))
"""
from __future__ import annotations

import dataclasses
from dataclasses import MISSING, dataclass
from typing import Any, Callable

from bioprune.engine.runtime import validate
from bioprune.engine.runtime.errors import fail

KEY = "bioprune.setting"      # the field-metadata key of a :class:`Setting`


@dataclass(frozen=True)
class Exclusive:
    """A mutually exclusive group of flags (``required``: exactly one must be given)."""
    name: str
    required: bool = False


@dataclass(frozen=True)
class Flag:
    """One argparse argument of a setting. ``names`` default to the field's name as
    ``--kebab-case``; several flags of one field share its ``dest`` (``--frozen`` / ``--finetune``,
    ``--indices`` / ``--all``). ``group`` is the argument group's title (None: the top level);
    ``exclusive`` its mutually exclusive group. ``external``: the flag is added by someone else
    (DeepSpeed's ``--deepspeed_config``), so only :func:`to_argv` uses it. ``unparse`` writes a
    value back as the one token ``type`` reads (``--tasks a,b``)."""
    names: tuple[str, ...] = ()
    help: str = ""
    type: Callable | None = None
    choices: tuple | None = None
    nargs: str | int | None = None
    metavar: str | None = None
    action: str | None = None        # store_true / store_false / store_const
    const: Any = None
    required: bool = False
    group: str | None = None
    exclusive: Exclusive | str | None = None
    external: bool = False
    unparse: Callable[[Any], str] | None = None

    @property
    def exclusive_group(self) -> Exclusive | None:
        return Exclusive(self.exclusive) if isinstance(self.exclusive, str) else self.exclusive

    def takes_value(self) -> bool:
        return self.action not in ("store_true", "store_false", "store_const")

    def value_of_action(self):
        """What the flag stores when given without a value (store_true/false/const)."""
        return {"store_true": True, "store_false": False}.get(self.action, self.const)


@dataclass(frozen=True)
class Setting:
    """The metadata of one settings field. ``identity``: True, a rerun must match it to resume;
    False, it only says where and how the run runs; None, the stage has no run identity."""
    flags: tuple[Flag, ...]
    identity: bool | None
    check: Callable[[str, Any], None] | None


def setting(default=MISSING, *, identity: bool | None, flag: Flag | tuple[Flag, ...] | None = None,
            check: Callable[[str, Any], None] | None = None, default_factory=MISSING):
    """A dataclass field with its flag(s), check and identity decision (``identity`` has no
    default: a new field cannot be added without deciding whether a rerun must match it)."""
    flags = () if flag is None else (flag,) if isinstance(flag, Flag) else tuple(flag)
    meta = {KEY: Setting(flags, identity, check)}
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def meta(f: dataclasses.Field) -> Setting | None:
    return f.metadata.get(KEY)


def flag_names(f: dataclasses.Field, flag: Flag) -> tuple[str, ...]:
    return flag.names or ("--" + f.name.replace("_", "-"),)


def declared(cls) -> list[tuple[dataclasses.Field, Setting]]:
    """Every field of ``cls`` with its :class:`Setting`; a field without one is an error (it
    would be a setting no flag, check or identity list knows about)."""
    out = []
    for f in dataclasses.fields(cls):
        m = meta(f)
        if m is None:
            raise TypeError(f"{cls.__name__}.{f.name} is not declared with setting(...)")
        out.append((f, m))
    return out


def default_of(f: dataclasses.Field):
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


# ------------------------------------------------------------------------ run identity

def identity_keys(cls) -> tuple[str, ...]:
    """The settings a rerun into the same run directory must match, in field order (the order of
    ``run_config.json``'s keys)."""
    return tuple(f.name for f, m in _classified(cls) if m.identity)


def run_only_keys(cls) -> tuple[str, ...]:
    """The settings that do not change a finished run's results (where and how it runs)."""
    return tuple(f.name for f, m in _classified(cls) if not m.identity)


def _classified(cls):
    fields = declared(cls)
    unknown = [f.name for f, m in fields if m.identity is None]
    if unknown:
        raise TypeError(f"{cls.__name__}: decide identity=True/False for {', '.join(unknown)}")
    return fields


# ------------------------------------------------------------------------ checks

def at_least(minimum: int, message: str | None = None) -> Callable[[str, Any], None]:
    """An integer >= ``minimum`` (None passes: the setting's "not given"). ``message``: the
    wording users have seen for this flag, with {flag} and {value}."""
    def check(name: str, value) -> None:
        if message is not None and value is not None and value < minimum:
            fail(message.format(flag="--" + name.replace("_", "-"), value=value))
        validate.positive_int(name, value, minimum=minimum)
    return check


def finite(**bounds) -> Callable[[str, Any], None]:
    """A finite number inside the bounds of :func:`validate.finite`."""
    return lambda name, value: validate.finite(name, value, **bounds)


def check_fields(s) -> None:
    """Every field's own check, then each choice and each mutually exclusive group, for settings
    made without the command line (a library caller, a test): argparse checks the last two for a
    launcher. Checks that relate several settings stay beside the stage (``checks.py``)."""
    fields = declared(type(s))
    for f, m in fields:
        if m.check is not None:
            m.check(f.name, getattr(s, f.name))
    groups: dict[str, list[str]] = {}
    for f, m in fields:
        value = getattr(s, f.name)
        for flag in m.flags:
            if flag.choices is not None and value is not None and value not in flag.choices:
                fail(f"{flag_names(f, flag)[0]} {value!r}: choose one of "
                     f"{', '.join(map(str, flag.choices))}")
            # which flag of an exclusive group the value says was given
            given = (value != default_of(f) if flag.takes_value()
                     else value == flag.value_of_action() != default_of(f))
            if flag.exclusive_group is not None and given:
                groups.setdefault(flag.exclusive_group.name, []).append(flag_names(f, flag)[0])
    for given in groups.values():
        if len(given) > 1:
            fail(f"give {given[0]} or {given[1]}, not both" if len(given) == 2
                 else f"give one of {', '.join(given)}")


# ------------------------------------------------------------------------ settings -> argv

def to_argv(s, *, skip: tuple[str, ...] = ()) -> list[str]:
    """The command line that makes a launcher build settings equal to ``s``: a flag for every
    setting that differs from its default, is required, or answers a required exclusive group
    (``--all`` for ``indices=None``). A renamed or removed flag fails where this runs (a test),
    not in the middle of a study. ``skip``: fields the caller passes itself."""
    argv: list[str] = []
    for f, m in declared(type(s)):
        if not m.flags or f.name in skip:
            continue
        value = getattr(s, f.name)
        needed = any(fl.required or (fl.exclusive_group and fl.exclusive_group.required
                                     and not fl.takes_value() and fl.value_of_action() == value)
                     for fl in m.flags)
        if value == default_of(f) and not needed:
            continue
        argv += _tokens(f, m.flags, value)
    return argv


def _tokens(f: dataclasses.Field, flags: tuple[Flag, ...], value) -> list[str]:
    for flag in flags:        # a flag that stores this very value without one (--all, --finetune)
        if not flag.takes_value() and flag.value_of_action() == value \
                and type(flag.value_of_action()) is type(value):
            return [flag_names(f, flag)[0]]
    for flag in flags:
        if flag.takes_value() and value is not None:
            name = flag_names(f, flag)[0]
            if flag.nargs in ("+", "*") or isinstance(flag.nargs, int):
                return [name, *map(str, value)]
            text = flag.unparse(value) if flag.unparse else str(value)
            # a value that starts with "-" would read as a flag: --flag=-1
            return [f"{name}={text}"] if text.startswith("-") else [name, text]
    raise ValueError(f"--{f.name.replace('_', '-')}: no flag gives the value {value!r}")
