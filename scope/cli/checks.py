"""Argument types and early checks of the `scope` command.

Each `type=` here turns a command-line string (or a typed `--config` value) into the value the
command uses, or raises `argparse.ArgumentTypeError`, which argparse prints as a usage error
(exit 2) and `scope.cli.config_file` turns into a `ConfigError`. The checks run before a command
loads a model or writes a file, so a mistake costs nothing and leaves nothing behind.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scope.errors import ConfigError, CorpusError, SteeringError

log = logging.getLogger("scope")


class Number:
    """An int or float flag with bounds: `type=Number(int, minimum=2)`.

    `base` tells `scope.cli.config_file` which YAML type the flag takes.
    """

    def __init__(self, base: type, minimum: float | None = None, maximum: float | None = None,
                 what: str = "") -> None:
        self.base, self.minimum, self.maximum = base, minimum, maximum
        self.__name__ = what or ("an integer" if base is int else "a number")  # argparse's text

    def __call__(self, text: Any) -> int | float:
        try:
            value = self.base(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{text!r} is not {self.__name__}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if self.minimum is not None and value < self.minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is too small: need {self.__name__}")
        if self.maximum is not None and value > self.maximum:
            raise argparse.ArgumentTypeError(f"{text!r} is too big: need {self.__name__}")
        return value


#: a context length: BOS plus at least one token
CTX = Number(int, 2, what="a context length (>= 2: BOS + 1 token)")
POSITIVE = Number(int, 1, what="a positive integer")
NON_NEGATIVE = Number(int, 0, what="an integer >= 0")
PORT = Number(int, 1, 65535, what="a TCP port (1-65535)")
SECONDS = Number(float, 0, what="a number of seconds >= 0")
TEMPERATURE = Number(float, 0, what="a temperature >= 0")
SEED = Number(int, 0, 2**63 - 1, what="a seed (0 <= seed < 2**63)")


def feature_arg(text: str) -> tuple[int, float]:
    """`INDEX:STRENGTH` (or `INDEX`, strength 1) -> (index, strength); index >= 0, finite."""
    index, sep, value = str(text).partition(":")
    try:
        parsed = int(index), float(value) if sep else 1.0
    except ValueError:
        parsed = None
    if parsed is None or parsed[0] < 0 or not math.isfinite(parsed[1]):
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected INDEX:STRENGTH with INDEX >= 0 and a finite STRENGTH, e.g. "
            "1234:8.0")
    return parsed


def shard_arg(text: str) -> str:
    """`i/n` with 0 <= i < n (kept as the string `scope.pipeline.extract` takes)."""
    i, sep, n = str(text).partition("/")
    try:
        ok = bool(sep) and 0 <= int(i) < int(n)
    except ValueError:
        ok = False
    if not ok:
        raise argparse.ArgumentTypeError(f"{text!r}: expected i/n with 0 <= i < n, e.g. 0/4")
    return str(text)


def device_arg(text: str) -> str:
    """A torch device this machine has: cpu, cuda, cuda:N, mps."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, TypeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a torch device; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(
                f"{text!r}: this machine has no usable CUDA device (torch {torch.__version__}); "
                "omit --device to use the CPU")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(
                f"{text!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: MPS is not available on this machine")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"{text!r}: scope runs on cpu, cuda or mps")
    return text


def folder_arg(text: str) -> Path:
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


def file_arg(text: str) -> Path:
    """A file to write: not a folder, and its parent is not a file."""
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: is a folder; give a file name")
    folder_arg(str(path.parent))
    return path


def check_corpus(source: str) -> None:
    """A local corpus path must exist before any model is loaded or anything is written."""
    if source == "default" or source.startswith("hf:"):
        return
    path = Path(source).expanduser()
    if not path.exists():
        raise CorpusError(f"--corpus {source}: no such file or folder; give a .txt/.jsonl/.parquet "
                          f"file or folder, 'default', or hf:DATASET")
    if not (path.is_file() or path.is_dir()):
        raise CorpusError(f"--corpus {source}: not a regular file or folder")


LOOPBACK = ("localhost",)


def warn_if_exposed(host: str) -> None:
    """Log a warning when the dashboard would listen beyond this machine."""
    try:
        loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = host in LOOPBACK
    if not loopback:
        log.warning("--host %s lets anyone who can reach this port use the dashboard: its "
                    "steering page runs the model on their prompts. Use 127.0.0.1 (the default) "
                    "and an SSH tunnel unless you trust the network.", host)


def check_relative_store(store: Any, sae: Any, spec: str) -> None:
    """`--relative STORE` must hold this very SAE (same spec, width and hook), not just its name.

    Raises:
        SteeringError: the store has no SAE of that name, or it was made from another SAE.
    """
    name = sae.cfg.name
    entries: list[Mapping] = list(store.manifest.get("saes") or [])
    entry = next((e for e in entries if e.get("name") == name), None)
    if entry is None:
        names = [e.get("name") for e in entries]
        raise SteeringError(f"--relative {store.path}: the store has no SAE {name!r} (it has "
                            f"{names}); extract a store with this --sae first")
    problems = []
    if entry.get("d_sae") != sae.cfg.d_sae:
        problems.append(f"d_sae {entry.get('d_sae')} vs {sae.cfg.d_sae}")
    if entry.get("hook_name") not in (None, sae.cfg.hook_name):
        problems.append(f"hook {entry.get('hook_name')} vs {sae.cfg.hook_name}")
    if not _same_spec(entry.get("spec"), getattr(sae, "scope_spec", spec), spec):
        problems.append(f"spec {entry.get('spec')!r} vs {spec!r}")
    if problems:
        raise SteeringError(
            f"--relative {store.path}: its SAE {name!r} is not the SAE you loaded "
            f"({'; '.join(problems)}), so its max activations do not apply; pass the --sae the "
            "store was extracted with, or a store of this SAE")


def _same_spec(recorded: Any, resolved: str, given: str) -> bool:
    if not isinstance(recorded, str) or not recorded:
        return False
    if recorded in (resolved, given):
        return True
    a, b = Path(recorded).expanduser(), Path(given).expanduser()
    return a.exists() and b.exists() and a.resolve() == b.resolve()


def check_out_is_not_an_input(out: Path, inputs: list[Path], flag: str = "--out") -> None:
    """Refuse an output folder that is (or lies inside) one of the inputs."""
    target = out.expanduser().resolve()
    for src in inputs:
        s = Path(src).expanduser().resolve()
        if target == s or s in target.parents:
            raise ConfigError(f"{flag} {out} lies inside the input {src}; write elsewhere")
