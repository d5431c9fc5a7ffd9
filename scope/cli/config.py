"""`--config FILE.yaml`: read a YAML file of flag values and check it strictly against a command.

The file is read safely (no object tags, no duplicate keys, at most 1 MiB, at most
`MAX_NODES` nodes once aliases are expanded and `MAX_DEPTH` levels deep) and every key must be
a flag of the command (dashes or underscores, not both for one flag). Values must already have
the flag's YAML type — jsonargparse would read the string `"false"` as false and `"12"` as 12;
here an on/off flag needs a YAML boolean, an integer flag a YAML integer, a repeatable flag a
list (one string is a one-element list: `sae: bundled` is `sae: [bundled]`) — and then pass the
flag's own check (`scope.cli.flags`). `key: null` keeps the default. The checked values become
the parser's defaults, so flags on the command line win wherever they stand.

YAML 1.1 reads `7e-5` (no dot) as a string; the loader here reads it as the number it looks like,
as YAML 1.2 does.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import yaml

from scope.cli.parser import Flag
from scope.errors import ConfigError, suggest

#: largest config file read (a config is a few hundred bytes; this is not a data channel)
MAX_CONFIG_BYTES = 1 << 20
#: most YAML nodes a config may expand to (aliases counted each time they are used)
MAX_NODES = 10_000
MAX_DEPTH = 16
_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$")


class _Loader(yaml.SafeLoader):
    """Safe YAML (no object tags) that reads `1e-3` as a float and refuses duplicate keys."""

    def construct_mapping(self, node, deep=False):  # noqa: ANN001, D102 (PyYAML signature)
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)):
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789"))


def _expanded_size(node: yaml.Node, where: str) -> int:
    """Nodes of the document with aliases expanded; ConfigError past the limits or on a cycle."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(n: yaml.Node, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise ConfigError(f"{where}: nested deeper than {MAX_DEPTH} levels; a config is a "
                              "flat mapping of flag names to values")
        if id(n) in sizes:
            return sizes[id(n)]
        if id(n) in open_nodes:
            raise ConfigError(f"{where}: a YAML alias refers to itself; remove the anchor")
        open_nodes.add(id(n))
        children = (n.value if isinstance(n, yaml.SequenceNode) else
                    [x for kv in n.value for x in kv] if isinstance(n, yaml.MappingNode) else [])
        total = 1 + sum(size(c, depth + 1) for c in children)
        if total > MAX_NODES:
            raise ConfigError(f"{where}: expands to more than {MAX_NODES:,} YAML nodes (an alias "
                              "bomb?); a config is a flat mapping of flag names to values")
        open_nodes.discard(id(n))
        sizes[id(n)] = total
        return total

    return size(node, 0)


def _check_depth(text: str, where: str) -> None:
    """Refuse nesting past MAX_DEPTH from the event stream (PyYAML's parser is iterative; its
    composer recurses, so a 5,000-deep list would otherwise end in a RecursionError)."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise ConfigError(f"{where}: nested deeper than {MAX_DEPTH} levels; a config is "
                                  "a flat mapping of flag names to values")
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML config file.

    Raises:
        ConfigError: the file is missing, unreadable, too big, not UTF-8, not valid YAML, has a
            duplicate key, expands too far, or holds something other than a mapping.
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
    loader = _Loader(text)
    try:
        _check_depth(text, where)
        node = loader.get_single_node()
        if node is not None:
            _expanded_size(node, where)
        data = None if node is None else loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: not valid YAML{at}: {problem}") from None
    finally:
        loader.dispose()
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of flag names to values (`ctx: 128`), "
                          f"got a YAML {_yaml_kind(data)}")
    return data


def check_config(data: dict[str, Any], flags: list[Flag], path: str | Path,
                 command: str) -> dict[str, Any]:
    """Check `data` against a command's flags; {field name: value} ready for `set_defaults`.

    Raises:
        ConfigError: an unknown key, a positional argument, one flag given twice (`top-k` and
            `top_k`), or a value of the wrong type or out of the flag's range.
    """
    by_name = {f.name: f for f in flags}
    known = sorted(f.name for f in flags if not f.positional)
    out: dict[str, Any] = {}
    given: dict[str, Any] = {}
    for key, value in data.items():
        where = f"--config {path}: key {key!r}"
        name = key.replace("-", "_") if isinstance(key, str) else None
        flag = by_name.get(name) if name else None
        if flag is not None and flag.positional:
            raise ConfigError(f"{where} is a positional argument of `{command}`; give it on the "
                              "command line")
        if flag is None:
            raise ConfigError(f"{where} is not a flag of `{command}`."
                              f"{suggest(str(name), known)} Known keys: {', '.join(known)}")
        if name in given:
            raise ConfigError(f"--config {path}: keys {given[name]!r} and {key!r} both set "
                              f"{flag.flag}; keep one")
        given[name] = key
        if value is not None:  # `key:` with no value keeps the flag's default
            out[name] = check_value(flag, value, where)
    return out


def check_value(flag: Flag, value: Any, where: str) -> Any:
    """A typed YAML value for `flag`, converted and range-checked like a command-line one."""
    items = value
    if flag.many:
        if isinstance(value, str) and flag.count is None:
            items = [value]  # `sae: bundled` means `sae: [bundled]`
        if not isinstance(items, list):
            raise _mismatch(flag, value, value, where, "")
        if not items:  # `sae: []` would silently mean the default (e.g. the bundled SAE)
            raise ConfigError(f"{where} = [] is an empty list: give {flag.flag} at least one "
                              "value, or leave the key out (or `key:` with no value) for its "
                              "default")
    else:
        items = [value]
    checked = []
    for i, item in enumerate(items):
        if not _fits(flag.base, item):
            raise _mismatch(flag, value, item, where, f" (item {i})" if flag.many else "")
        if flag.choices is not None and item not in flag.choices:
            raise ConfigError(f"{where} = {item!r}: {flag.flag} takes one of "
                              f"{', '.join(map(str, flag.choices))}")
        if flag.base is not bool:
            try:
                item = flag.convert(item)
            except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
                raise ConfigError(f"{where} = {item!r}: {exc}") from None
        checked.append(item)
    if flag.count is not None and len(checked) != flag.count:
        raise ConfigError(f"{where} = {value!r}: {flag.flag} takes exactly {flag.count} values")
    return checked if flag.many else checked[0]


def _fits(base: type, value: Any) -> bool:
    if base is bool:
        return isinstance(value, bool)
    if base is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, str)  # str and Path


def _mismatch(flag: Flag, value: Any, item: Any, where: str, at: str) -> ConfigError:
    one = {bool: "a YAML boolean (true or false, unquoted)", int: "an integer (e.g. 128)",
           float: "a number (e.g. 0.5 or 1.0e-3)"}.get(flag.base, "a string")
    if flag.count is not None:
        want = f"a list of {flag.count} values, each {one}"
    else:
        want = f"a list whose items are each {one}, or one item" if flag.many else one
    return ConfigError(f"{where} = {value!r}{at} does not fit {flag.flag}: expected {want}, got "
                       f"a YAML {_yaml_kind(item)}")


def _yaml_kind(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "float", str: "string", list: "list",
            dict: "mapping", type(None): "null"}.get(type(value), type(value).__name__)
