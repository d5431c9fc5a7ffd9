"""What this process holds now on a device: the starting point of a memory budget."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from pathlib import Path

import torch


@functools.cache
def _malloc_trim():
    """glibc's `malloc_trim`, or None (another C library, another OS)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def resident_bytes(device: str | torch.device = "cpu") -> int:
    """Bytes held now: the process's resident set on a CPU (VmRSS of /proc/self/status, 0 where
    that file is absent), the memory torch has allocated on a GPU.

    On a CPU, memory freed but kept by the C allocator (a large temporary just released) is
    handed back first (glibc `malloc_trim`), so the figure is what is live, not what was."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return int(torch.cuda.memory_allocated(dev))
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
    return _status_bytes("VmRSS")


def peak_resident_bytes() -> int:
    """The process's peak resident set so far (VmHWM of /proc/self/status; 0 where absent)."""
    return _status_bytes("VmHWM")


def _status_bytes(key: str) -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
