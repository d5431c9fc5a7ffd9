"""Atomic file writes: write a temp file beside the target, fsync, then rename over it.

Readers never see half a file, and a crash leaves either the old file or the new one. Standard
library only, so the store (numpy + safetensors) and the SAE code can both use it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


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
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; artifacts are meant to be shared
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(dest: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `dest` atomically."""
    atomic_write(dest, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
