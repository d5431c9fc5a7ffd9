"""The device a plan is for: does it exist, how much memory it offers, how fast it computes.

`device_info` checks the device before anything is planned (an absent GPU is a `DeviceError`),
reads its memory (CPU: `MemAvailable` of /proc/meminfo; CUDA: free memory of that GPU) and
measures three throughputs with short probes: a square matmul in the run's dtype (FLOP/s), a
JumpReLU-like elementwise op into a fresh tensor and a row-wise top-k (seconds per element). Each probe takes well under a second; results are cached per process.
"""

from __future__ import annotations

import functools
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from scope.errors import DeviceError

PROBE_N = 1024  # side of the probe matmul (2 GFLOP)
PROBE_ELEMENTS = 2048 * 4096  # a [tokens, d_sae]-like float32 tensor (32 MiB) per op
PROBE_TOPK = 2048  # side of the [block, block] cosine tile decoder_neighbours ranks
PROBE_MATVEC_ROWS = 2048  # the probe tensor as a [2048, 4096] matrix times a vector


@dataclass(frozen=True)
class DeviceInfo:
    """What the planner knows of one device."""

    device: str
    memory_bytes: int
    """Memory the run may use: available host memory (CPU) or free device memory (CUDA)."""
    flops: float
    """Measured matmul throughput in the run's dtype (FLOP/s)."""
    elementwise_s: float
    """Seconds per element of one elementwise float32 op into a fresh tensor (JumpReLU's
    compare-and-multiply, measured: allocation and page faults included)."""
    topk_s: float
    """Seconds per element of a row-wise top-16 (the neighbour tables' ranking)."""
    matvec_s: float
    """Seconds per matrix element of a vector-matrix product (the graph's influence ranking)."""
    host_memory_bytes: int
    threads: int

    def to_dict(self) -> dict:
        return asdict(self)


def host_available_bytes() -> int:
    """MemAvailable from /proc/meminfo (or total physical memory where that file is absent)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def disk_free_bytes(path: str | os.PathLike) -> int:
    """Free bytes on the filesystem that will hold `path` (its nearest existing parent)."""
    p = Path(path).expanduser().resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def check_device(device: str | torch.device) -> torch.device:
    """The torch device, or a `DeviceError` when this machine does not have it."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(f"device {device!r} is not a torch device ({exc}); use 'cpu', 'cuda' "
                          "or 'cuda:N'") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise DeviceError(f"device {device!r}: this machine has no CUDA GPU; plan for "
                              "device='cpu', or run the plan on the GPU machine")
        if dev.index is not None and dev.index >= n:
            raise DeviceError(f"device {device!r}: this machine has {n} GPU(s) "
                              f"(cuda:0..cuda:{n - 1}); pick one of them")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError(f"device {device!r}: MPS is not available here; use 'cpu'")
    elif dev.type != "cpu":
        raise DeviceError(f"device {device!r}: the planner knows 'cpu', 'cuda[:N]' and 'mps'")
    return dev


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _best_of(fn, dev: torch.device, reps: int = 5) -> float:
    """Best seconds of `fn` over `reps` runs. On CPU this is process CPU time over the thread
    count: what the work takes on an idle machine, however busy a shared one is right now."""
    clock = time.process_time if dev.type == "cpu" else time.perf_counter
    scale = 1.0 / torch.get_num_threads() if dev.type == "cpu" else 1.0
    fn()  # warm-up (allocations, kernel choice)
    _sync(dev)
    best = float("inf")
    for _ in range(reps):
        start = clock()
        fn()
        _sync(dev)
        best = min(best, (clock() - start) * scale)
    return max(best, 1e-9)


@functools.lru_cache(maxsize=8)
def _probe(device: str, dtype: str, threads: int) -> tuple[float, float, float, float]:
    dev = torch.device(device)
    dt = getattr(torch, dtype)
    g = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(PROBE_N, PROBE_N, device=dev, dtype=dt, generator=g)
    b = torch.randn(PROBE_N, PROBE_N, device=dev, dtype=dt, generator=g)
    flops = 2 * PROBE_N**3 / _best_of(lambda: a @ b, dev)
    x = torch.randn(PROBE_ELEMENTS, device=dev, generator=g)
    t = torch.zeros(PROBE_ELEMENTS, device=dev)
    elementwise = _best_of(lambda: x * (x > t), dev) / (2 * PROBE_ELEMENTS)
    tile = torch.randn(PROBE_TOPK, PROBE_TOPK, device=dev, generator=g)
    # decoder_neighbours ranks each tile by rows and by columns (the transposed view)
    topk = _best_of(lambda: (tile.topk(16, dim=1), tile.T.topk(16, dim=1)), dev) / (
        2 * PROBE_TOPK**2)
    m = x.reshape(PROBE_MATVEC_ROWS, -1)
    v = torch.randn(PROBE_MATVEC_ROWS, device=dev, generator=g)
    matvec = _best_of(lambda: v @ m, dev) / m.numel()
    return flops, elementwise, topk, matvec


def device_info(device: str | torch.device = "cpu", dtype: str = "float32") -> DeviceInfo:
    """Check `device`, read its memory and measure its throughput (cached per process)."""
    dev = check_device(device)
    host = host_available_bytes()
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        dev = torch.device("cuda", index)
        memory = torch.cuda.mem_get_info(index)[0]
    else:
        memory = host
    flops, elementwise, topk, matvec = _probe(str(dev), dtype, torch.get_num_threads())
    return DeviceInfo(device=str(dev), memory_bytes=int(memory), flops=flops,
                      elementwise_s=elementwise, topk_s=topk, matvec_s=matvec,
                      host_memory_bytes=int(host),
                      threads=torch.get_num_threads())
