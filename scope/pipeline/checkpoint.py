"""Extraction state <-> feature store: the window pool, save/load, out-folder checks, the lock.

The store *is* the checkpoint: `save_state` writes every accumulator's statistics (all in
mergeable form) and the token windows they refer to as one generation; `load_state` reads them
back to resume. `check_out_dir` decides whether `--out` is resumed, reused, refused or started
fresh, and `store_lock` keeps a second run off the same folder (a lock left by a killed run on
this machine is taken over).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file

from scope.errors import StoreCorruptError, StoreError, StoreLockedError
from scope.pipeline.accumulators import FeatureAccumulator, FeatureStats
from scope.store import schema as S
from scope.store.reader import read_manifest
from scope.store.writer import write_generation

log = logging.getLogger(__name__)


class WindowPool:
    """Token ids of the windows kept contexts refer to: `{window index: [pos] int32}`."""

    def __init__(self) -> None:
        self.rows: dict[int, np.ndarray] = {}

    def add(self, indices: torch.Tensor, tokens: torch.Tensor) -> None:
        for w, row in zip(indices.tolist(), tokens.to(torch.int32).cpu().numpy(), strict=True):
            self.rows[w] = row

    def add_arrays(self, index: np.ndarray, tokens: np.ndarray) -> None:
        for w, row in zip(index.tolist(), tokens, strict=True):
            self.rows[w] = row

    def prune(self, accs: Sequence[FeatureAccumulator]) -> None:
        """Drop windows no kept context refers to any more."""
        keep = set()
        for acc in accs:
            keep.update(acc.referenced_windows().tolist())
        self.rows = {w: r for w, r in self.rows.items() if w in keep}

    def arrays(self, ctx: int) -> tuple[np.ndarray, np.ndarray]:
        index = np.array(sorted(self.rows), dtype=np.int64)
        tokens = (np.stack([self.rows[w] for w in index.tolist()]) if len(index)
                  else np.zeros((0, ctx), dtype=np.int32))
        return index, tokens


def canonical(obj: Any) -> str:
    """A comparable JSON text (tuples and lists alike, sorted keys)."""
    return json.dumps(obj, sort_keys=True, default=str)


def check_out_dir(out: Path, config: Mapping[str, Any], overwrite: bool) -> S.Manifest | None:
    """Decide what to do with `out` for a run with `config`; writes nothing unless it clears.

    Returns the manifest of a store to resume or reuse (same configuration), or None to start
    fresh. A store that never reached its first checkpoint is cleared (nothing is lost), so a
    run that failed before its first batch never blocks the corrected command.

    Raises:
        StoreError: `out` holds a store made with another configuration (unless `overwrite`),
            a format 1 store, or files that are not a store.
    """
    if out.exists() and not out.is_dir():
        raise StoreError(f"--out {out} is a file; choose a folder")
    manifest = read_manifest(out) if out.is_dir() else None
    if manifest is not None and overwrite:
        log.warning("--overwrite: deleting the store in %s", out)
        clear_store(out)
        return None
    if manifest is not None and manifest.data is None:
        log.info("%s holds a store without any checkpoint; starting it afresh", out)
        clear_store(out)
        return None
    if manifest is not None:
        old = manifest.config
        if canonical(old) != canonical(config):
            keys = sorted(k for k in set(old) | set(config)
                          if canonical(old.get(k)) != canonical(config.get(k)))
            diff = "; ".join(f"{k}: {old.get(k)!r} in the store, {config.get(k)!r} now"
                             for k in keys)
            raise StoreError(
                f"{out} holds a store made with a different configuration ({diff}). Refusing to "
                f"mix them: pass --overwrite (overwrite=True) to start fresh, delete {out}, or "
                f"choose another --out")
        if manifest.format_version != S.FORMAT_VERSION:
            raise StoreError(
                f"{out} holds a format {manifest.format_version} store, which this scope reads "
                f"but does not extend (it writes format {S.FORMAT_VERSION}); pass --overwrite "
                "to extract it again, or choose another --out")
        return manifest
    if out.is_dir():
        foreign = [p.name for p in out.iterdir()
                   if p.name not in S.OWN_NAMES and not p.name.startswith((S.GEN_PREFIX, "."))]
        if foreign:
            raise StoreError(f"{out} is not empty and holds no feature store ({foreign[:3]}...); "
                             "choose an empty or new --out folder")
    return None


def clear_store(out: Path) -> None:
    """Delete a store's own files (manifest, generations, tables, vocab, rank stores)."""
    (out / S.MANIFEST).unlink(missing_ok=True)
    for p in out.iterdir():
        if p.name in S.OWN_NAMES or p.name.startswith(S.GEN_PREFIX):
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def _lock_holder(path: Path) -> dict | None:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
        return holder if isinstance(holder, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable: written by someone else, treated as live


def _alive(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return True  # cannot tell for another machine: assume it runs
    if holder["pid"] == os.getpid():
        return False  # a lock of this process that is not held: left by an aborted call
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_HELD: set[Path] = set()


@contextmanager
def store_lock(out: Path) -> Iterator[None]:
    """Hold `out/.scope.lock` while writing the store in `out` (created if needed).

    Raises:
        StoreLockedError: another live run holds the lock (its pid and host are named).
    """
    out.mkdir(parents=True, exist_ok=True)
    path = (out / S.LOCK).resolve()
    if path in _HELD:
        raise StoreLockedError(f"{out} is already being written by this process")
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    for _ in range(5):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _lock_holder(path)
            if holder is None:
                continue  # released meanwhile
            if _alive(holder):
                raise StoreLockedError(
                    f"{out} is being written by another run (pid {holder.get('pid')} on "
                    f"{holder.get('host')}, since {holder.get('started')}); wait for it to "
                    f"finish or choose another --out. If no such run exists, delete "
                    f"{path}") from None
            aside = path.with_name(f"{S.LOCK}.stale-{os.getpid()}")
            try:
                os.rename(path, aside)  # only one of several takers wins this
            except FileNotFoundError:
                continue
            if _lock_holder(aside) != holder:  # a live lock replaced the stale one meanwhile
                try:
                    os.link(aside, path)
                except FileExistsError:
                    pass
                aside.unlink(missing_ok=True)
                continue
            aside.unlink(missing_ok=True)
            log.warning("%s: taking over the lock of a run that no longer exists (pid %s)",
                        out, holder.get("pid"))
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(me, fh)
        break
    else:
        raise StoreLockedError(f"{out}: could not take the store lock {path}; retry")
    _HELD.add(path)
    try:
        yield
    finally:
        _HELD.discard(path)
        if _lock_holder(path) == me:
            path.unlink(missing_ok=True)


def save_state(out: Path, manifest: S.Manifest, accs: Sequence[FeatureAccumulator],
               pool: WindowPool) -> None:
    """Write accumulators + windows as a new generation and commit the manifest."""
    pool.prune(accs)
    index, tokens = pool.arrays(int(manifest.ctx))
    stats = {entry.dir: acc.stats() for entry, acc in zip(manifest.saes, accs, strict=True)}
    manifest.updated = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_generation(out, manifest, stats, index, tokens)


def _load(path: Path) -> dict[str, np.ndarray]:
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise StoreCorruptError(f"{path} is missing; the store is corrupt: delete it and "
                                "extract again (or --overwrite)") from None
    except Exception as exc:
        raise StoreCorruptError(f"{path} is unreadable ({exc}); the store is corrupt: delete "
                                "it and extract again (or --overwrite)") from exc


def load_stats(out: Path, manifest: S.Manifest, entry: S.SAEEntry) -> FeatureStats:
    """One SAE's statistics from the current generation."""
    folder = out / manifest.data / S.SAES_DIR / entry.dir
    summary = _load(folder / S.SUMMARY)
    size = manifest.feature_shard_size
    parts = [_load(folder / S.features_filename(a, min(a + size, entry.d_sae)))
             for a in range(0, entry.d_sae, size)]
    try:
        per = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        return FeatureStats(
            tokens=int(summary[S.TOKENS_COUNTED][0]), firing_count=summary[S.FIRING_COUNT],
            act_sum_fixed=summary[S.ACT_SUM_FIXED], max_activation=summary[S.MAX_ACTIVATION],
            histogram=per[S.HISTOGRAM], top_window=per[S.TOP_WINDOW], top_value=per[S.TOP_VALUE],
            top_pos=per[S.TOP_POS], top_acts=per[S.TOP_ACTS], band_window=per[S.BAND_WINDOW],
            band_value=per[S.BAND_VALUE], band_pos=per[S.BAND_POS], band_acts=per[S.BAND_ACTS],
            token_sketch=per[S.TOKEN_SKETCH])
    except (KeyError, ValueError) as exc:
        raise StoreCorruptError(f"{folder}: the statistics are incomplete ({exc}); delete the "
                                "store and extract again") from exc


def load_state(out: Path, manifest: S.Manifest, devices: Sequence[Any] | None = None
               ) -> tuple[list[FeatureAccumulator], WindowPool]:
    """Read back what `save_state` wrote: accumulators (on `devices`, one per SAE; default CPU)
    and the window pool."""
    devices = devices or ["cpu"] * len(manifest.saes)
    if not (out / manifest.data).is_dir():
        raise StoreCorruptError(f"{out / manifest.data} (the manifest's data) is missing; the "
                                "store is corrupt: delete it and extract again")
    accs = [FeatureAccumulator.from_stats(
        load_stats(out, manifest, entry), int(manifest.ctx), device=device,
        hist_edges=np.asarray(manifest.histogram_edges), band_edges=np.asarray(manifest.band_edges))
        for entry, device in zip(manifest.saes, devices, strict=True)]
    data = _load(out / manifest.data / S.WINDOWS)
    pool = WindowPool()
    pool.add_arrays(data[S.WINDOW_INDEX], data[S.WINDOW_TOKENS])
    return accs, pool
