"""What every `scope` command shares: the command registry, the one output style, exit codes.

A command is one typed dataclass (its fields are the flags, each field's docstring the flag's
`--help`) and one function taking an instance of it, registered with
`@command("name", TheDataclass, example="scope name ...")` (docs/cli.md shows a whole one).
`scope.cli.parser` turns the dataclass into a jsonargparse parser; `report` turns any exception
into one `scope CMD: error: ...` line and an exit status (2 usage, 1 runtime fault, 130 Ctrl-C,
143 SIGTERM).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from scope.errors import ScopeError


def say(text: str = "") -> None:
    """A result line for the user: the CLI's output (logging is for diagnostics)."""
    sys.stdout.write(text + "\n")


@dataclass(frozen=True)
class Command:
    """A registered subcommand: its name, flags (dataclasses) and the function it runs."""

    name: str
    configs: tuple[type, ...]
    """Dataclasses whose fields are the flags (one for every command but `train`)."""
    run: Callable[..., int]
    """Called with one instance per dataclass in `configs`; returns the exit status."""
    example: str
    """One real invocation, shown in `--help`."""
    help: str
    """First line of `scope --help`; the dataclass docstring by default."""
    epilog: str = ""


COMMANDS: dict[str, Command] = {}


def command(name: str, *configs: type, example: str, help: str | None = None,
            epilog: str = "") -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Register `fn(cfg)` as `scope NAME`, its flags the fields of the dataclass(es) `configs`."""

    def register(fn: Callable[..., int]) -> Callable[..., int]:
        doc = help or " ".join((configs[0].__doc__ or "").split("\n\n")[0].split())
        COMMANDS[name] = Command(name, configs, fn, example, doc, epilog)
        return fn

    return register


def positional(default: Any = dataclasses.MISSING, *, nargs: str | None = None) -> Any:
    """A dataclass field given as a positional argument (`nargs` '?' or '+'), not a flag."""
    return dataclasses.field(default=default, metadata={"positional": True, "nargs": nargs})


# --------------------------------------------------------------------------------------------
# errors and exit codes
# --------------------------------------------------------------------------------------------


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so cleanups run (temporary files, partial checkpoints)."""


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """While a command runs, SIGTERM stops it like Ctrl-C does (exit status 143)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):  # noqa: ANN001 (signal API)
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def report(where: str, exc: BaseException, *, verbose: bool = False) -> int:
    """Print one line for `exc` (a traceback only for an unexpected error with -v); exit status."""
    if isinstance(exc, ScopeError):
        print(f"{where}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    if isinstance(exc, Terminated):
        print(f"{where}: terminated", file=sys.stderr)
        return 143
    if isinstance(exc, KeyboardInterrupt):
        print(f"{where}: interrupted", file=sys.stderr)
        return 130
    if isinstance(exc, BrokenPipeError):  # `scope saes | head`
        return 0
    if isinstance(exc, OSError):
        print(f"{where}: error: {_os_message(exc)}", file=sys.stderr)
        return 1
    if "No space left on device" in str(exc):  # e.g. safetensors' own error type
        print(f"{where}: error: disk full ({exc}); free disk space and rerun (an interrupted "
              "run resumes)", file=sys.stderr)
        return 1
    if verbose:
        import traceback

        traceback.print_exception(exc)
    if type(exc).__name__ == "OutOfMemoryError":
        print(f"{where}: error: out of memory ({exc}); lower --batch-size or use a smaller model",
              file=sys.stderr)
        return 1
    print(f"{where}: internal error: {type(exc).__name__}: {exc}\nThis is a bug in scope; rerun "
          "with -v for the traceback and report it.", file=sys.stderr)
    return 1


def _os_message(exc: OSError) -> str:
    """One line for an operating-system error: what failed, on which file, and a hint."""
    path = f" ({exc.filename})" if exc.filename else ""
    hint = {errno.ENOSPC: "free disk space and rerun (an interrupted run resumes)",
            errno.EACCES: "check the file's permissions",
            errno.EROFS: "write somewhere writable",
            errno.ENOTDIR: "a path component is a file, not a folder",
            errno.EISDIR: "expected a file, found a folder"}.get(exc.errno or 0, "")
    return f"{exc.strerror or exc}{path}" + (f"; {hint}" if hint else "")
