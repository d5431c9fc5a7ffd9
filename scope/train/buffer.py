"""Activation cache on disk and the shuffling buffer that feeds the trainer.

Capturing activations dominates the cost of a CPU run, so a run writes them once into an
`ActivationCache` (a folder of bfloat16 `.npy` shards plus `meta.json`) and trains from it for as
many epochs as it likes. The writer appends whole windows only and records how many windows it
has consumed, so an interrupted capture resumes where it stopped. `shuffled_batches` streams the
shards through a `ShuffleBuffer`: a pool of activations from several shards, shuffled, half of it
emitted as batches before it is refilled, so consecutive batches mix many documents. Everything is
a function of the seed, so a resumed run replays the same batches.

Shapes: shards `[n, d_in]`, batches `[batch_size, d_in]`.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scope.base.atomic import atomic_write, atomic_write_text
from scope.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

META_FILENAME = "meta.json"
CACHE_FORMAT_VERSION = 1


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


class ActivationCache:
    """A folder of bfloat16 activation shards `shard_NNNNN.npy` [n, d_in] and `meta.json`.

    numpy has no bfloat16, so shards hold the bfloat16 bit patterns as int16; `shard` reinterprets
    them. bfloat16 keeps the range of float32 (Gemma's residual stream has coordinates far past
    float16's 65504) with a relative error of at most 2^-9.

    `meta.json` holds `format_version`, `d_in`, `key` (what was captured, to refuse a stale
    cache), `shards` ([{file, tokens}]), `windows_done`, `tokens` and `complete`.
    """

    def __init__(self, folder: str | os.PathLike, *, key: dict[str, Any], d_in: int) -> None:
        """Open (or start) the cache in `folder`; a cache made for a different key is discarded.

        Args:
            folder: the cache folder.
            key: description of what is captured (model, hook, corpus, split, ctx, tokens).
            d_in: activation width.
        """
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        meta_path = self.folder / META_FILENAME
        meta = _read_meta(meta_path)
        if meta is None or meta.get("key") != key or meta.get("d_in") != d_in:
            if meta is not None:
                log.warning("%s: cache was made for %s; starting a new one", self.folder,
                            meta.get("key"))
            for old in self.folder.glob("shard_*.npy"):
                old.unlink()
            meta = {"format_version": CACHE_FORMAT_VERSION, "key": key, "d_in": d_in,
                    "dtype": "bfloat16 (bits stored as int16)", "shards": [], "windows_done": 0, "tokens": 0, "complete": False}
            _write_json_atomic(meta_path, meta)
        self.meta = meta
        self._pending: list[np.ndarray] = []

    @classmethod
    def open(cls, folder: str | os.PathLike) -> ActivationCache | None:
        """Open an existing cache (whatever its key); None when its meta.json is unusable."""
        meta = _read_meta(Path(folder) / META_FILENAME)
        return None if meta is None else cls(folder, key=meta["key"], d_in=meta["d_in"])

    @property
    def complete(self) -> bool:
        return bool(self.meta["complete"])

    @property
    def tokens(self) -> int:
        """Activations in the written shards."""
        return int(self.meta["tokens"])

    @property
    def windows_done(self) -> int:
        """Corpus windows whose activations are all in written shards."""
        return int(self.meta["windows_done"])

    @property
    def d_in(self) -> int:
        return int(self.meta["d_in"])

    @property
    def n_shards(self) -> int:
        return len(self.meta["shards"])

    # -- writing -------------------------------------------------------------------------------
    def append(self, acts: np.ndarray | torch.Tensor, windows: int, *, flush_tokens: int) -> None:
        """Add the activations of `windows` whole windows; write a shard once enough are pending.

        Args:
            acts: [n, d_in] activations (BOS/padding already removed).
            windows: how many corpus windows these activations came from.
            flush_tokens: write a shard when at least this many activations are pending.
        """
        if not isinstance(acts, torch.Tensor):
            acts = torch.from_numpy(np.asarray(acts, dtype=np.float32))
        bits = acts.detach().to(torch.bfloat16).cpu().contiguous().view(torch.int16)
        self._pending.append(bits.numpy())
        self._pending_windows = getattr(self, "_pending_windows", 0) + windows
        if sum(len(a) for a in self._pending) >= flush_tokens:
            self.flush()

    def flush(self) -> None:
        """Write pending activations as one shard and record progress atomically."""
        if not self._pending:
            return
        data = np.concatenate(self._pending)
        name = f"shard_{self.n_shards:05d}.npy"
        def write(tmp: str) -> None:
            with open(tmp, "wb") as fh:  # a file object: np.save(path) would append ".npy"
                np.save(fh, data)

        try:
            atomic_write(self.folder / name, write)
        except OSError as exc:
            if exc.errno is not None:
                raise
            # numpy reports a short write as "N requested and M written", without errno
            free = shutil.disk_usage(self.folder).free
            raise OSError(errno.ENOSPC, f"No space left on device: a {data.nbytes:,}-byte "
                          f"activation shard does not fit in the {free:,} bytes free",
                          str(self.folder / name)) from exc
        self.meta["shards"].append({"file": name, "tokens": int(len(data))})
        self.meta["tokens"] += int(len(data))
        self.meta["windows_done"] += self._pending_windows
        _write_json_atomic(self.folder / META_FILENAME, self.meta)
        self._pending, self._pending_windows = [], 0

    def finish(self) -> None:
        """Flush and mark the cache complete."""
        self.flush()
        self.meta["complete"] = True
        _write_json_atomic(self.folder / META_FILENAME, self.meta)

    # -- reading -------------------------------------------------------------------------------
    def shard(self, i: int, rows: int | None = None) -> torch.Tensor:
        """Shard i (its first `rows` rows, or all) as a bfloat16 tensor [n, d_in]."""
        path = self.folder / self.meta["shards"][i]["file"]
        try:
            bits = np.load(path, mmap_mode="r", allow_pickle=False)
            ok = bits.dtype == np.int16 and bits.ndim == 2 and bits.shape[1] == self.d_in
        except (OSError, ValueError, EOFError) as exc:
            raise CheckpointError(f"{path}: unreadable activation shard ({exc}); delete "
                                  f"{self.folder} to capture it again") from None
        if not ok:
            raise CheckpointError(f"{path}: expected int16 [n, {self.d_in}], got {bits.dtype} "
                                  f"{list(bits.shape)}; delete {self.folder} to capture it again")
        return torch.from_numpy(np.array(bits[:rows])).view(torch.bfloat16)

    def sample(self, n: int) -> torch.Tensor:
        """Up to n activations [n, d_in] float32, spread over every shard (for statistics)."""
        per = max(1, -(-n // max(1, self.n_shards)))
        return torch.cat([self.shard(i, per).float() for i in range(self.n_shards)])[:n]

    def all(self) -> torch.Tensor:
        """Every activation [tokens, d_in] float32 (for the held-out split, which is small)."""
        return torch.cat([self.shard(i).float() for i in range(self.n_shards)])


class ShuffleBuffer:
    """Mixes a stream of activation chunks into shuffled batches.

    Keeps a pool of up to `capacity` activations; when full it shuffles the pool, emits batches
    from one half and keeps the other half to mix with the next chunks. What is left at the end
    is shuffled and emitted; a last partial batch is dropped.
    """

    def __init__(self, capacity: int, batch_size: int, generator: torch.Generator) -> None:
        """Args:
            capacity: activations held at most (>= 2 * batch_size).
            batch_size: activations per emitted batch.
            generator: torch generator of the shuffling.
        """
        if capacity < 2 * batch_size:
            raise ConfigError(f"ShuffleBuffer capacity {capacity} must be at least twice the "
                             f"batch size {batch_size}")
        self.capacity = capacity
        self.batch_size = batch_size
        self.generator = generator

    def __call__(self, chunks: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Yield shuffled batches [batch_size, d_in] from chunks [n, d_in] (dtype kept)."""
        pool: list[torch.Tensor] = []
        held = 0
        for chunk in chunks:
            pool.append(chunk)
            held += len(chunk)
            if held >= self.capacity:
                data = torch.cat(pool)
                data = data[torch.randperm(len(data), generator=self.generator)]
                n_out = (len(data) // 2) // self.batch_size * self.batch_size
                yield from data[:n_out].split(self.batch_size)
                pool, held = [data[n_out:]], len(data) - n_out
        if held:
            data = torch.cat(pool)
            data = data[torch.randperm(len(data), generator=self.generator)]
            n_out = len(data) // self.batch_size * self.batch_size
            yield from data[:n_out].split(self.batch_size)


def shuffled_batches(cache: ActivationCache, batch_size: int, *, seed: int,
                     capacity: int = 1 << 19, start_step: int = 0) -> Iterator[torch.Tensor]:
    """Endless float32 batches [batch_size, d_in] from the cache, epoch after epoch.

    Each epoch visits the shards in a seeded random order through a `ShuffleBuffer`; the batch
    sequence depends only on (cache, batch_size, seed, capacity), so `start_step` skips exactly
    the batches a resumed run has already trained on.

    Args:
        cache: a complete activation cache.
        batch_size: activations per batch.
        seed: seed of the shard order and of the shuffling.
        capacity: shuffle-pool size in activations.
        start_step: batches to skip (already consumed by a previous run).

    Yields:
        Batches [batch_size, d_in] float32.
    """
    if cache.n_shards == 0:
        raise CheckpointError(f"activation cache {cache.folder} is empty; delete it and rerun")
    capacity = max(capacity, 2 * batch_size)
    to_skip = start_step
    epoch = 0
    while True:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(cache.n_shards, generator=gen).tolist()
        per_epoch = _batches_per_epoch(cache, batch_size, capacity, order)
        if to_skip >= per_epoch:  # skip a whole epoch without reading it
            to_skip -= per_epoch
            epoch += 1
            continue
        chunks = (cache.shard(i) for i in order)
        for batch in ShuffleBuffer(capacity, batch_size, gen)(chunks):
            if to_skip:
                to_skip -= 1
                continue
            yield batch.float()
        epoch += 1


def _batches_per_epoch(cache: ActivationCache, batch_size: int, capacity: int,
                       order: list[int]) -> int:
    """Number of batches `ShuffleBuffer` emits for one pass over the shards in `order`."""
    held = count = 0
    for i in order:
        held += cache.meta["shards"][i]["tokens"]
        if held >= capacity:
            n_out = (held // 2) // batch_size * batch_size
            count += n_out // batch_size
            held -= n_out
    return count + held // batch_size


_SHARD_NAME = re.compile(r"^shard_\d{5,}\.npy$")


def _read_meta(path: Path) -> dict[str, Any] | None:
    """A cache's meta.json when it is complete and well-typed, else None (and a warning).

    Shard names must be plain `shard_NNNNN.npy` names: a path read from the file never leads
    outside the cache folder.
    """
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
        ok = (isinstance(meta, dict) and isinstance(meta.get("key"), dict)
              and _count(meta.get("d_in"), 1) and _count(meta.get("tokens"))
              and _count(meta.get("windows_done")) and isinstance(meta.get("complete"), bool)
              and isinstance(meta.get("shards"), list)
              and all(isinstance(s, dict) and isinstance(s.get("file"), str)
                      and _SHARD_NAME.match(s["file"]) and _count(s.get("tokens"))
                      for s in meta["shards"]))
    except (OSError, ValueError) as exc:
        meta, ok = str(exc), False
    if not ok:
        log.warning("%s is unreadable or malformed; the activation cache is captured again",
                    path)
        return None
    return meta


def _count(value: Any, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum
