"""`--config FILE.yaml`: read a YAML file of flag values and check it against a command's flags.

Every key must be one of the command's flags (dashes or underscores) and every value must have
the flag's type, checked strictly with pydantic: a flag that takes a number needs a YAML number
(`ctx: 12.5` or `ctx: "12"` is refused for an integer flag), an on/off flag needs a YAML boolean
(`overwrite: "false"` is refused, never read as true), a repeatable flag takes a list (a single
string is read as a one-element list: `sae: bundled` is `sae: [bundled]`). A value of `null`
leaves the flag at its default. Problems raise `ConfigError` naming the file, the key, the value
and the type expected; unknown keys name the closest valid key.

YAML 1.1 reads `7e-5` (no dot) as a string; the loader here reads it as the number it looks like,
as YAML 1.2 does.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import yaml

from scope.errors import ConfigError, suggest

#: largest config file read (a config is a few hundred bytes; this is not a data channel)
MAX_CONFIG_BYTES = 1 << 20
_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$")


class _Loader(yaml.SafeLoader):
    """Safe YAML (no object tags) that reads `1e-3` as a float and refuses duplicate keys."""

    def construct_mapping(self, node, deep=False):  # noqa: ANN001, D102 (PyYAML signature)
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            if isinstance(key, (str, int, float, bool)):
                seen[key] = True
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT,
                              list("-+0123456789"))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML config file.

    Raises:
        ConfigError: the file is missing, unreadable, not UTF-8, not valid YAML, has a duplicate
            key, or holds something other than a mapping.
    """
    path = Path(path)
    where = f"--config {path}"
    if not path.is_file():
        why = "is a folder" if path.is_dir() else "does not exist"
        raise ConfigError(f"{where}: the file {why}; pass a YAML file of flag values "
                          "(e.g. configs/extract/bundled.yaml)")
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{where}: {path.stat().st_size:,} bytes is too big for a config "
                              f"file (at most {MAX_CONFIG_BYTES:,})")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: not valid YAML{at}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of flag names to values (`ctx: 128`), "
                          f"got a YAML {_yaml_kind(data)}")
    return data


def config_defaults(parser: argparse.ArgumentParser, data: dict[str, Any], path: str | Path,
                    command: str) -> dict[str, Any]:
    """Check `data` against `parser`'s flags and return {dest: value} ready for `set_defaults`.

    Args:
        parser: the subcommand's parser.
        data: the file's mapping (`read_config_file`).
        path: the file (for messages).
        command: e.g. "scope extract" (for messages).

    Raises:
        ConfigError: an unknown key, a positional argument, or a value of the wrong type.
    """
    actions = {a.dest: a for a in parser._actions if a.option_strings and a.dest not in
               ("help", "config", "version")}
    positionals = {a.dest for a in parser._actions if not a.option_strings}
    out: dict[str, Any] = {}
    for key, value in data.items():
        where = f"--config {path}: key {key!r}"
        dest = str(key).replace("-", "_") if isinstance(key, str) else None
        if dest in positionals:
            raise ConfigError(f"{where} is a positional argument of `{command}`; give it on the "
                              "command line")
        if dest not in actions:
            known = sorted(actions)
            raise ConfigError(f"{where} is not a flag of `{command}`."
                              f"{suggest(str(dest), known)} Known keys: {', '.join(known)}")
        if value is None:
            continue  # `key:` with no value keeps the flag's default
        out[dest] = _check_value(actions[dest], value, where)
    return out


def _check_value(action: argparse.Action, value: Any, where: str) -> Any:
    from pydantic import TypeAdapter, ValidationError

    flag = action.option_strings[0]
    kind, many = _value_type(action)
    if kind is None:
        raise ConfigError(f"{where}: {flag} cannot be set from a config file")
    if many and isinstance(value, str) and not isinstance(action.nargs, int):
        value = [value]  # `sae: bundled` means `sae: [bundled]`
    wanted = list[kind] if many else kind
    try:
        checked = TypeAdapter(wanted).validate_python(value, strict=True)
    except ValidationError as exc:
        err = exc.errors()[0]
        item = f" (item {err['loc'][0]})" if err["loc"] else ""
        raise ConfigError(f"{where} = {value!r}{item} does not fit {flag}: expected "
                          f"{_describe(kind, many, action)}, got a YAML "
                          f"{_yaml_kind(_at(value, err['loc']))}") from None
    if many and isinstance(action.nargs, int) and len(checked) != action.nargs:
        raise ConfigError(f"{where} = {value!r}: {flag} takes exactly {action.nargs} values")
    items = checked if many else [checked]
    convert = action.type if callable(action.type) and action.type not in (int, float, str) \
        else None
    converted = []
    for item in items:
        if convert is not None:
            try:
                item = convert(item)
            except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
                raise ConfigError(f"{where} = {item!r}: {exc}") from None
        if action.choices is not None and item not in action.choices:
            raise ConfigError(f"{where} = {item!r}: {flag} takes one of "
                              f"{', '.join(map(str, action.choices))}")
        converted.append(item)
    return converted if many else converted[0]


def _value_type(action: argparse.Action) -> tuple[type | None, bool]:
    """(element type, takes a list) of a flag; (None, False) for flags a file cannot set."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction,
                           argparse.BooleanOptionalAction)):
        return bool, False
    if not isinstance(action, (argparse._StoreAction, argparse._AppendAction)):
        return None, False
    base = getattr(action.type, "base", action.type)  # scope.cli.checks.Number(int, ...)
    kind = base if base in (int, float) else str
    many = isinstance(action, argparse._AppendAction) or action.nargs in ("+", "*") or (
        isinstance(action.nargs, int))
    return kind, many


def _describe(kind: type, many: bool, action: argparse.Action) -> str:
    one = {bool: "a YAML boolean (true or false, unquoted)", int: "an integer (e.g. 128)",
           float: "a number (e.g. 0.5 or 1.0e-3)", str: "a string"}[kind]
    if many and isinstance(action.nargs, int):
        return f"a list of {action.nargs} values, each {one}"
    return f"a list whose items are each {one}, or one item" if many else one


def _at(value: Any, loc: tuple) -> Any:
    for part in loc:
        try:
            value = value[part]
        except (TypeError, KeyError, IndexError):
            break
    return value


def _yaml_kind(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "float", str: "string", list: "list",
            dict: "mapping", type(None): "null"}.get(type(value), type(value).__name__)
