"""The `scope` command: entry point and dispatch (a thin shell over the library).

Each command lives in its group module (`models`, `extract`, `eval`, `steer`, `attribute`,
`explore`, `train`, `dashboard`) as one dataclass and one function registered with
`scope.cli.common.command`; this module imports them, builds the jsonargparse parser and turns
any outcome into an exit status.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from jsonargparse import ArgumentParser

# importing a command group registers its commands
from scope.cli import attribute as _attribute  # noqa: F401
from scope.cli import dashboard as _dashboard  # noqa: F401
from scope.cli import eval as _eval  # noqa: F401
from scope.cli import explore as _explore  # noqa: F401
from scope.cli import extract as _extract  # noqa: F401
from scope.cli import models as _models  # noqa: F401
from scope.cli import plan as _plan  # noqa: F401
from scope.cli import steer as _steer  # noqa: F401
from scope.cli import train as _train  # noqa: F401
from scope.cli.common import COMMANDS, Command, report, sigterm_interrupts
from scope.cli.config import check_config, read_config_file
from scope.cli.parser import Formatter, flags, instances, subparser, usage_error
from scope.errors import ScopeError

#: the order `scope --help` lists the commands in: the data flow, then the extras
ORDER = ["models", "saes", "plan", "extract", "merge", "eval", "steer", "attribute", "labels", "explain",
         "export", "dashboard", "train", "demo"]


def build_parser(chosen: str | None = None) -> tuple[ArgumentParser, dict[str, ArgumentParser]]:
    """The `scope` parser and the parser of each command (by name).

    Only the `chosen` command's parser gets its flags (the others are listed, never parsed):
    reading the field docstrings of every command would cost `scope CMD` half a second.
    """
    root = ArgumentParser(
        prog="scope", exit_on_error=False, formatter_class=Formatter,
        description="Interpretability toolkit for Gemma models: load Gemma 2/3 with hooks, "
        "encode activations with Gemma Scope SAEs, extract feature stores, browse and steer.",
        epilog="Start with `scope demo`; `scope <command> --help` shows each command's flags "
        "and an example.",
    )
    root.add_argument("--version", action="version", version=_version())
    subcommands = root.add_subcommands(dest="command", required=False, metavar="COMMAND")
    rank = {name: i for i, name in enumerate(ORDER)}
    subs = {}
    for name in sorted(COMMANDS, key=lambda n: rank.get(n, len(ORDER))):
        subs[name] = subparser(COMMANDS[name], with_flags=name == chosen)
        subcommands.add_subcommand(name, subs[name], help=COMMANDS[name].help)
    return root, subs


def _version() -> str:
    from scope.base.version import __version__

    return f"scope {__version__}"


def parse(argv: Sequence[str]) -> tuple[Command | None, list[Any], bool]:
    """(command, its dataclass instances, --verbose) of a command line; (None, [], False) for
    `scope` alone (help printed).

    Raises:
        UsageError: the command line does not parse.
        ConfigError: the `--config` file or a value does not fit.
        SystemExit: `--help` or `--version` (printed).
    """
    argv = list(argv)
    name = _command_name(argv)
    root, subs = build_parser(name)
    if name in subs:
        path = _config_path(argv[argv.index(name) + 1:])
        if path is not None:
            cmd = COMMANDS[name]
            fields = [f for config in cmd.configs for f in flags(config)]
            subs[name].set_defaults(check_config(read_config_file(path), fields, path,
                                                 f"scope {name}"))
    try:
        ns = root.parse_args(argv)
    except (argparse.ArgumentError, ValueError, TypeError) as exc:  # jsonargparse's errors
        if isinstance(exc, ScopeError):
            raise
        if name in subs:
            subs[name].print_usage(sys.stderr)
        raise usage_error(exc, COMMANDS.get(name or "")) from None
    if not ns.command:
        root.print_help()
        return None, [], False
    cmd = COMMANDS[ns.command]
    values = ns[ns.command]
    return cmd, instances(cmd, values), bool(values.verbose)


def _command_name(argv: list[str]) -> str | None:
    """The command a command line names: its first word that is not an option of `scope`."""
    return next((a for a in argv if not a.startswith("-")), None)


def _config_path(args: list[str]) -> str | None:
    """The value of `--config` among a command's arguments (the last one given)."""
    path = None
    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args):
            path = args[i + 1]
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `scope` console script; callable from tests with a list of args.

    Returns the exit status: 0 on success, 2 for a usage error (a flag, a config file, a name or
    an input file the user must change), 1 for a fault while running (network, disk, a bug),
    130 when interrupted, 143 on SIGTERM. Errors print one `scope COMMAND: error: ...` line,
    never a traceback (`-v` adds the traceback of an unexpected error).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    name = _command_name(argv)
    where = f"scope {name}" if name in COMMANDS else "scope"
    try:
        cmd, configs, verbose = parse(argv)
    except SystemExit as exc:  # --help or --version
        return exc.code if isinstance(exc.code, int) else 0
    except ScopeError as exc:
        return report(where, exc)
    if cmd is None:
        return 0
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    with sigterm_interrupts():
        try:
            return int(cmd.run(*configs) or 0)
        except SystemExit:
            raise
        except BaseException as exc:  # noqa: BLE001 (each kind gets its message in report)
            return report(f"scope {cmd.name}", exc, verbose=verbose)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
