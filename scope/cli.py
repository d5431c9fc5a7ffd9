"""The `scope` command: a thin shell over the library.

Each subcommand is one `_add_<name>(subparsers)` function that declares its flags (with a real
example in its help) and binds a `run(args)` that calls public library functions. Every
subcommand accepts `--config FILE.yaml` whose keys are its flag names (dashes or underscores);
flags given on the command line win over the file.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from scope.errors import ScopeError

log = logging.getLogger("scope")


def _example(text: str) -> str:
    return f"example:\n  {text}"


def _subparser(sub, name: str, help: str, example: str, run: Callable) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name,
        help=help,
        description=f"{help}\n\n{_example(example)}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="YAML file whose keys are this command's flags")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    p.set_defaults(run=run)
    return p


# --------------------------------------------------------------------------------------------
# subcommands (each helper below adds one; keep them thin)
# --------------------------------------------------------------------------------------------

_ADDERS: list[Callable] = []


def subcommand(fn: Callable) -> Callable:
    """Register an `_add_<name>(sub)` function; order of registration is the order in --help."""
    _ADDERS.append(fn)
    return fn


# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scope",
        description="Interpretability toolkit for Gemma models: load Gemma 2/3 with hooks, "
        "encode activations with Gemma Scope SAEs, extract feature stores, browse and steer.",
        epilog="Start with `scope demo`; `scope <command> --help` shows each command's flags "
        "and an example.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _ADDERS:
        add(sub)
    return parser


def _version() -> str:
    from scope import __version__

    return f"scope {__version__}"


def _apply_config(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Parse argv; when --config is given, its keys become defaults that the flags override."""
    args = parser.parse_args(argv)
    config = getattr(args, "config", None)
    if config is None:
        return args
    import yaml

    if not config.is_file():
        parser.error(f"--config {config}: no such file")
    data = yaml.safe_load(config.read_text()) or {}
    if not isinstance(data, dict):
        parser.error(f"--config {config}: expected a mapping of flag names to values")
    sub = parser._subparsers._group_actions[0].choices[args.command]  # the chosen subparser
    known = {a.dest for a in sub._actions}
    defaults = {}
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        if dest not in known:
            parser.error(
                f"--config {config}: unknown key {key!r} for `scope {args.command}`; "
                f"known keys: {', '.join(sorted(k for k in known if k != 'help'))}"
            )
        defaults[dest] = value
    sub.set_defaults(**defaults)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `scope` console script; callable from tests with a list of args."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _apply_config(parser, argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 0
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.run(args) or 0)
    except ScopeError as exc:
        print(f"scope {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"scope {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
