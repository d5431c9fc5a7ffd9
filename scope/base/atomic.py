"""Atomic writes: build a file or a folder beside its target, fsync, then rename it into place.

Readers never see half a file or half a folder, and a crash leaves either the old one or the new
one (plus at most a hidden `.NAME.*.tmp` leftover that the next write of the same target
removes). New files and folders get the permissions the user's umask gives (0644 / 0755 under
the usual 022), not `tempfile`'s private 0600 / 0700. Standard library only, so the store
(numpy + safetensors), the SAE code and the model cache can all use it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(dest: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)` on a temporary file beside `dest`, then rename it over `dest`.

    Args:
        dest: the final path; its folder is created if needed.
        write: writes the complete content to the path it is given.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; artifacts are meant to be shared
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(dest: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `dest` atomically."""
    atomic_write(dest, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


@contextmanager
def atomic_folder(dest: str | os.PathLike, *, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `dest`; on a clean exit fsync its files and rename it.

    Args:
        dest: the final folder; its parent is created if needed.
        replace: delete an existing `dest` first (otherwise an existing one is an error).

    On an exception the temporary folder is deleted and `dest` is left as it was.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for stale in dest.parent.glob(f".{dest.name}.*.tmp"):  # left by a killed earlier attempt
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    try:
        yield tmp
        mode = _umask()
        for path in [tmp, *tmp.rglob("*")]:
            if path.is_dir():
                os.chmod(path, 0o777 & ~mode)
            else:
                with open(path, "rb+") as fh:
                    os.fsync(fh.fileno())
                os.chmod(path, 0o666 & ~mode)  # some writers (safetensors) create files 0600
        if dest.exists() and replace:
            shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
