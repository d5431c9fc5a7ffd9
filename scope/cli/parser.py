"""A command's dataclass -> its jsonargparse parser, and argv -> the dataclass instance.

Each field becomes one flag: `top_k: POSITIVE = 20` is `--top-k` (dashes on the command line,
the field name in `--config` files), its docstring the help, its annotation the type (see
`scope.cli.flags` for the bounded ones). `bool` fields are switches (`--overwrite`; a field
that defaults to true also gets `--no-NAME`), `list[...]` fields repeat (`--sae a --sae b`),
`tuple[X, X]` fields take that many values, `Literal[...]` fields a choice, and fields made with
`positional()` are positional arguments.

Why not jsonargparse's `add_class_arguments`: it names flags `--top_k` (users type `--top-k`),
wants `--overwrite true` for a switch, appends with `--sae+ b` (users repeat `--sae`), and
reads the `--config` string `"false"` as false; each would break a command line or config that
works today. The field docstrings are read by docstring_parser, the library jsonargparse's
`signatures` extra uses for the same purpose.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import re
import textwrap
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from jsonargparse import ActionYesNo, ArgumentParser

from scope.cli.common import Command
from scope.cli.flags import Check
from scope.errors import UsageError


@dataclass(frozen=True)
class Flag:
    """How one dataclass field is given: on the command line and as a `--config` key."""

    name: str
    """Field name (and `--config` key; dashes are accepted there too)."""
    base: type
    """bool, int, float, str or Path: the YAML type a config value must have."""
    convert: Any
    """str (or a typed config value) -> value; raises ArgumentTypeError."""
    default: Any
    help: str
    many: bool = False
    count: int | None = None
    """Values a tuple field takes."""
    choices: tuple | None = None
    positional: bool = False
    nargs: str | None = None
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return self.name if self.positional else "--" + self.name.replace("_", "-")

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING


def flags(config: type) -> list[Flag]:
    """The flags of one command dataclass, in field order."""
    return list(_flags(config))


@functools.cache
def _flags(config: type) -> tuple[Flag, ...]:
    import docstring_parser

    docs = {p.arg_name: " ".join((p.description or "").split())
            for p in docstring_parser.parse_from_object(config).params}
    hints = typing.get_type_hints(config, include_extras=True)
    out = []
    for f in dataclasses.fields(config):
        default = f.default
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        hint, convert, many, count, choices = _unpack(hints[f.name])
        out.append(Flag(f.name, hint, convert or _Plain(hint),
                        default, docs.get(f.name, ""), many, count, choices,
                        bool(f.metadata.get("positional")), f.metadata.get("nargs"),
                        f.metadata.get("metavar")))
    return tuple(out)


def _unpack(hint: Any) -> tuple[type, Any, bool, int | None, tuple | None]:
    """(base type, converter, repeatable, tuple length, choices) of a field annotation."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _unpack(inner[0])
    if origin is Annotated:  # a Check turns one string into the value; a Bound checks its base
        if isinstance(args[1], Check):
            return str, args[1], False, None, None
        base, _, many, count, choices = _unpack(args[0])
        return base, args[1], many, count, choices
    if origin is Literal:
        return type(args[0]), None, False, None, tuple(args)
    if origin is list:
        base, convert, _, _, choices = _unpack(args[0])
        return base, convert, True, None, choices
    if origin is tuple:
        base, convert, _, _, choices = _unpack(args[0])
        return base, convert, True, len(args), choices
    if hint not in (bool, int, float, str, Path):
        raise TypeError(f"scope.cli: unsupported flag type {hint!r}")
    return hint, None, False, None, None


@dataclass(frozen=True)
class _Plain:
    """`int`, `float`, `str` or `Path` applied as argparse's `type=`, passing values that already
    have it (checked `--config` values, and jsonargparse's re-check of parsed ones). Given the bare
    type, jsonargparse would refuse `--lr nan` itself, before the section's `__post_init__` can
    say which field is out of range."""

    base: type

    @property
    def __name__(self) -> str:
        return self.base.__name__

    def __call__(self, value: Any) -> Any:
        return value if type(value) is self.base else self.base(value)


class _Repeat(argparse.Action):
    """A repeatable flag: the first use on the command line replaces a `--config` list."""

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: ANN001
        current = getattr(namespace, self.dest, None)
        if not isinstance(current, _FromArgv):
            current = _FromArgv()
        current.append(values)
        setattr(namespace, self.dest, current)


class _FromArgv(list):
    """Items a repeatable flag got on the command line."""


@dataclass(frozen=True)
class _Items:
    """The type of a repeatable flag: converts one command-line string; passes converted values
    (jsonargparse re-checks the finished list, and `--config` values arrive converted)."""

    convert: Any

    @property
    def __name__(self) -> str:
        return getattr(self.convert, "__name__", "value")

    def __call__(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self(v) for v in value]
        return self.convert(value) if isinstance(value, str) else value


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the example lines of a description as written (jsonargparse gives a command's
    parser the formatter of `scope`'s)."""


def add_flags(parser: ArgumentParser, config: type) -> None:
    """Declare the fields of `config` as arguments of `parser`."""
    for f in flags(config):
        kw: dict[str, Any] = {"help": _help(f)}
        for key, value in (("metavar", f.metavar), ("choices", f.choices)):
            if value is not None:
                kw[key] = value
        if f.positional:
            parser.add_argument(f.name, type=f.convert, **kw,
                                **({"nargs": f.nargs} if f.nargs else {}))
        elif f.base is bool:
            action = ActionYesNo(yes_prefix="", no_prefix="no-") if f.default else "store_true"
            parser.add_argument(f.flag, action=action, default=bool(f.default), **kw)
        else:
            convert = f.convert
            if f.many and f.count is None:
                kw["action"], convert = _Repeat, _Items(f.convert)
            elif f.count is not None:
                kw["nargs"] = f.count
            default = None if f.required else f.default
            parser.add_argument(f.flag, type=convert, required=f.required,
                                default=list(default) if isinstance(default, tuple) else default,
                                **kw)


def _help(f: Flag) -> str:
    text = f.help.replace("%", "%%")
    if f.default not in (None, False, dataclasses.MISSING, "") and not f.positional:
        shown = list(f.default) if isinstance(f.default, tuple) else f.default
        text += f" (default {shown})"
    return text


def subparser(cmd: Command, with_flags: bool = True) -> ArgumentParser:
    """The parser of one command: its flags plus `--config FILE.yaml` and `-v`."""
    p = ArgumentParser(prog=f"scope {cmd.name}", exit_on_error=False, formatter_class=Formatter,
                       description=f"{textwrap.fill(cmd.help, 90)}\n\nexample:\n  {cmd.example}",
                       epilog=cmd.epilog)
    p.add_argument("--config", type=str, metavar="FILE.yaml",
                   help="YAML file whose keys are this command's flags (typed like the flags; a "
                   "repeatable flag takes a list or one value); flags on the command line win")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    for config in cmd.configs if with_flags else ():
        add_flags(p, config)
    return p


def instances(cmd: Command, values: Any) -> list[Any]:
    """One instance per dataclass of `cmd`, from a parsed namespace (runs their checks)."""
    out = []
    for config in cmd.configs:
        kwargs = {}
        for f in flags(config):
            value = getattr(values, f.name)
            kwargs[f.name] = list(value) if isinstance(value, list) else value
        out.append(config(**kwargs))
    return out


def usage_error(exc: Exception, cmd: Command | None) -> UsageError:
    """jsonargparse's error as one line naming arguments as the user types them."""
    text = " ".join(str(exc).split())
    if cmd is not None:
        shown = {f.name: f.flag
                 for config in cmd.configs for f in flags(config)}
        text = re.sub(rf"\b{re.escape(cmd.name)}\.(\w+)", lambda m: shown.get(m[1], m[1]), text)
    where = f"scope {cmd.name}" if cmd else "scope"
    return UsageError(f"{text} (see `{where} --help`)")
