"""The device a plan is for: does it exist, how much memory it offers, how fast it computes.

`device_info` checks the device before anything is planned (an absent GPU is a `DeviceError`),
reads its memory (CPU: `MemAvailable` of /proc/meminfo; CUDA: free memory of that GPU) and
measures its throughputs with short probes: a square matmul in the run's dtype (FLOP/s), a
JumpReLU-like elementwise op into a fresh tensor, a row-wise top-k and a vector-matrix product
(seconds per element), and one small op's dispatch (seconds per op). Each probe takes well under
a second; results are cached per process.
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
PROBE_MATVEC = 4096  # a vector times a [4096, 4096] matrix (64 MiB: past a 32 MiB L3, as a
                    # graph's [rows, nodes] edge rows are where their ranking takes time)
#: runs per probe, the best kept: this VM's matmul rate dips for ~0.1 s at a time (one best-of-5
#: read 63 GFLOP/s among 83-99 over 12 s), so the runs span ~0.3 s to step over a dip
PROBE_REPS = 12
PROBE_DISPATCH_LOOP = 1024  # iterations of a slice, a transpose and a matmul of 8 x 8 tensors


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
    dispatch_s: float
    """Seconds per small op (a view or a matmul of 8 x 8 tensors): the framework's and the
    interpreter's cost of one call, which a graph pays per edge product and per row."""
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


def _best_of(fn, dev: torch.device, reps: int = PROBE_REPS) -> float:
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
def _probe(device: str, dtype: str, threads: int) -> tuple[float, float, float, float, float]:
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
    m = torch.full((PROBE_MATVEC, PROBE_MATVEC), 0.5, device=dev)
    v = torch.randn(PROBE_MATVEC, device=dev, generator=g)
    matvec = _best_of(lambda: v @ m, dev) / m.numel()
    s = torch.randn(8, 8, device=dev, generator=g)
    dispatch = _best_of(lambda: [s[1:3] @ s.T for _ in range(PROBE_DISPATCH_LOOP)], dev) / (
        3 * PROBE_DISPATCH_LOOP)
    return flops, elementwise, topk, matvec, dispatch


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
    flops, elementwise, topk, matvec, dispatch = _probe(str(dev), dtype, torch.get_num_threads())
    return DeviceInfo(device=str(dev), memory_bytes=int(memory), flops=flops,
                      elementwise_s=elementwise, topk_s=topk, matvec_s=matvec,
                      dispatch_s=dispatch, host_memory_bytes=int(host),
                      threads=torch.get_num_threads())
