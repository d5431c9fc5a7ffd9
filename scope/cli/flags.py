"""Flag value types of the `scope` command: the one place bounds and formats are checked.

A command's dataclass annotates a field with one of these (`ctx: CTX = 128`,
`shard: Annotated[str | None, Check(shard)] = None`); `scope.cli.parser` converts command-line
strings with it and `scope.cli.config` applies it to typed `--config` values, so a value is
refused the same way from either. Every check raises `argparse.ArgumentTypeError` (printed as a
usage error, exit 2) before a model is loaded or a file written.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

log = logging.getLogger("scope")


@dataclass(frozen=True)
class Bound:
    """An int or float with bounds: `Annotated[int, Bound(int, 1, what="a positive integer")]`."""

    base: type
    minimum: float | None = None
    maximum: float | None = None
    what: str = ""

    @property
    def __name__(self) -> str:  # argparse names the type in its messages
        return self.what or ("an integer" if self.base is int else "a number")

    def __repr__(self) -> str:
        return self.__name__

    def __call__(self, text: Any) -> int | float:
        try:
            value = self.base(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{text!r} is not {self.__name__}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if self.minimum is not None and value < self.minimum:
            raise argparse.ArgumentTypeError(f"{str(text)!r} is too small: need {self.__name__}")
        if self.maximum is not None and value > self.maximum:
            raise argparse.ArgumentTypeError(f"{str(text)!r} is too big: need {self.__name__}")
        return value


@dataclass(frozen=True)
class Check:
    """A converter of a string flag (`Annotated[str, Check(shard)]`); raises ArgumentTypeError."""

    convert: Callable[[str], Any]

    def __call__(self, text: Any) -> Any:
        return self.convert(text) if isinstance(text, str) else text  # else: converted already

    def __repr__(self) -> str:
        return self.convert.__name__


#: a context length: BOS plus at least one token
CTX = Annotated[int, Bound(int, 2, what="a context length (>= 2: BOS + 1 token)")]
POSITIVE = Annotated[int, Bound(int, 1, what="a positive integer")]
NON_NEGATIVE = Annotated[int, Bound(int, 0, what="an integer >= 0")]
PORT = Annotated[int, Bound(int, 1, 65535, what="a TCP port (1-65535)")]
SECONDS = Annotated[float, Bound(float, 0, what="a number of seconds >= 0")]
TEMPERATURE = Annotated[float, Bound(float, 0, what="a temperature >= 0")]
SEED = Annotated[int, Bound(int, 0, 2**63 - 1, what="a seed (0 <= seed < 2**63)")]
FRACTION = Annotated[float, Bound(float, 0, 1, what="a fraction in [0, 1]")]


def feature(text: str) -> tuple[int, float]:
    """`INDEX:STRENGTH` (or `INDEX`, strength 1) -> (index, strength); index >= 0, finite."""
    index, sep, value = text.partition(":")
    try:
        parsed = int(index), float(value) if sep else 1.0
    except ValueError:
        parsed = None
    if parsed is None or parsed[0] < 0 or not math.isfinite(parsed[1]):
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected INDEX:STRENGTH with INDEX >= 0 and a finite STRENGTH, e.g. "
            "1234:8.0")
    return parsed


def feature_list(text: str) -> list[int]:
    """`0-99,1234` -> the indices it names (each >= 0, ranges low-high)."""
    out: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            a, b = -1, -1
        if a < 0 or b < a:
            raise argparse.ArgumentTypeError(
                f"{part!r}: give feature indices >= 0 and ranges low-high, e.g. 0-99,1234")
        out += range(a, b + 1)
    return out


def shard(text: str) -> str:
    """`i/n` with 0 <= i < n (kept as the string `scope.pipeline.extract` takes)."""
    i, sep, n = text.partition("/")
    try:
        ok = bool(sep) and 0 <= int(i) < int(n)
    except ValueError:
        ok = False
    if not ok:
        raise argparse.ArgumentTypeError(f"{text!r}: expected i/n with 0 <= i < n, e.g. 0/4")
    return text


def device(text: str) -> str:
    """A torch device this machine has: cpu, cuda, cuda:N, mps."""
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, TypeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a torch device; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(
                f"{text!r}: this machine has no usable CUDA device (torch {torch.__version__}); "
                "omit --device to use the CPU")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(
                f"{text!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: MPS is not available on this machine")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"{text!r}: scope runs on cpu, cuda or mps")
    return text


def folder(text: str) -> Path:
    """A folder to write: may not exist yet, but neither it nor a parent may be a file."""
    path = Path(text).expanduser()
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                what = "is" if p == path else f"lies under {p}, which is"
                raise argparse.ArgumentTypeError(
                    f"{text}: {what} a file, not a folder; choose a folder path")
            break
    return path


def file(text: str) -> Path:
    """A file to write: not a folder, and its parent is not a file."""
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: is a folder; give a file name")
    folder(str(path.parent))
    return path


FOLDER = Annotated[Path, Check(folder)]
FILE = Annotated[Path, Check(file)]
DEVICE = Annotated[str, Check(device)]
SHARD = Annotated[str, Check(shard)]


def warn_if_exposed(host: str) -> None:
    """Log a warning when the dashboard would listen beyond this machine."""
    try:
        loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        log.warning("--host %s lets anyone who can reach this port use the dashboard: its "
                    "steering page runs the model on their prompts. Use 127.0.0.1 (the default) "
                    "and an SSH tunnel unless you trust the network.", host)
