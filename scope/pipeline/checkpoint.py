"""Extraction state <-> feature store: the window pool, save and load.

The store *is* the checkpoint: `save_state` writes every accumulator's statistics (all in
mergeable form) and the token windows they refer to as one generation; `load_state` reads them
back to resume. What `--out` may hold and which run may write it are the store's rules
(`scope.store.folder.check_out_dir`, `scope.store.lock.store_lock`, re-exported here).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file

from scope.errors import StoreCorruptError
from scope.pipeline.accumulators import FeatureStats
from scope.pipeline.feature_blocks import BlockedAccumulator
from scope.store import schema as S
from scope.store import validate as V
from scope.store.folder import canonical, check_out_dir, clear_store
from scope.store.lock import store_lock
from scope.store.writer import write_generation

log = logging.getLogger(__name__)

__all__ = ["WindowPool", "canonical", "check_out_dir", "clear_store", "load_state", "load_stats",
           "save_state", "store_lock"]


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

    def prune(self, accs: Sequence[BlockedAccumulator]) -> None:
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


def save_state(out: Path, manifest: S.Manifest, accs: Sequence[BlockedAccumulator],
               pool: WindowPool) -> None:
    """Write accumulators + windows as a new generation and commit the manifest."""
    pool.prune(accs)
    index, tokens = pool.arrays(int(manifest.ctx))
    stats = {entry.dir: acc.stats() for entry, acc in zip(manifest.saes, accs, strict=True)}
    manifest.updated = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_generation(out, manifest, stats, index, tokens)


def _load(out: Path, path: Path, spec: V.Spec) -> dict[str, np.ndarray]:
    V.inside(out, path)
    try:
        arrays = load_file(str(path))
    except FileNotFoundError:
        raise StoreCorruptError(f"{path} is missing; the store is corrupt: delete it and "
                                "extract again (or --overwrite)") from None
    except Exception as exc:
        raise StoreCorruptError(f"{path} is unreadable ({exc}); the store is corrupt: delete "
                                "it and extract again (or --overwrite)") from exc
    V.check_arrays(out, path, arrays, spec)
    return arrays


def load_stats(out: Path, manifest: S.Manifest, entry: S.SAEEntry) -> FeatureStats:
    """One SAE's statistics from the current generation (checked as the reader checks them)."""
    folder = V.inside(out, out / manifest.data / S.SAES_DIR / entry.dir)
    summary = _load(out, folder / S.SUMMARY, V.summary_spec(manifest, entry))
    V.check_summary(out, folder / S.SUMMARY, summary)
    size = manifest.feature_shard_size
    parts = []
    for a in range(0, entry.d_sae, size):
        b = min(a + size, entry.d_sae)
        parts.append(_load(out, folder / S.features_filename(a, b), V.features_spec(manifest,
                                                                                    b - a)))
        V.check_feature_rows(out, folder / S.features_filename(a, b), parts[-1], manifest.ctx)
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
               ) -> tuple[list[BlockedAccumulator], WindowPool]:
    """Read back what `save_state` wrote: accumulators (on `devices`, one per SAE; default CPU)
    and the window pool."""
    devices = devices or ["cpu"] * len(manifest.saes)
    if not V.inside(out, out / manifest.data).is_dir():
        raise StoreCorruptError(f"{out / manifest.data} (the manifest's data) is missing; the "
                                "store is corrupt: delete it and extract again")
    accs = [BlockedAccumulator.from_stats(
        load_stats(out, manifest, entry), int(manifest.ctx), device=device,
        hist_edges=np.asarray(manifest.histogram_edges), band_edges=np.asarray(manifest.band_edges))
        for entry, device in zip(manifest.saes, devices, strict=True)]
    data = _load(out, out / manifest.data / S.WINDOWS, V.windows_spec(manifest))
    V.check_windows(out, out / manifest.data / S.WINDOWS, data[S.WINDOW_INDEX])
    pool = WindowPool()
    pool.add_arrays(data[S.WINDOW_INDEX], data[S.WINDOW_TOKENS])
    return accs, pool
