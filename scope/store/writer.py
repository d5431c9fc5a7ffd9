"""Writing a feature store: the manifest, the vocabulary, the once-per-run tables, generations.

Every write is atomic (`scope.base.atomic`): a generation is built in a hidden temporary folder,
renamed into place, and committed by swapping `manifest.json`, so the manifest always names a
complete generation whatever moment a run is killed at. Before writing, the free space is
checked against what the write needs; a disk that fills up anyway raises `StoreFullError` with
that figure and leaves the last complete generation. numpy + safetensors + the standard library.
"""

from __future__ import annotations

import errno
import json
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from scope.base.atomic import atomic_folder, atomic_write_text
from scope.errors import StoreFullError
from scope.store import schema as S

#: bytes kept free beyond an estimate (safetensors headers, the manifest, filesystem overhead)
_SLACK = 64 << 10


def write_manifest(root: str | Path, manifest: S.Manifest) -> None:
    """Write the manifest atomically (the commit point of every store write)."""
    atomic_write_text(Path(root) / S.MANIFEST, json.dumps(manifest.to_dict(), indent=1,
                                                          sort_keys=True))


def write_vocab(root: str | Path, vocab: list[str]) -> None:
    """`vocab.json`: the display string of every token id."""
    atomic_write_text(Path(root) / S.VOCAB, json.dumps(vocab, ensure_ascii=False))


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _guarded(root: Path, needed: int, write: Callable[[], None]) -> None:
    """Run `write` when the disk holds `needed` bytes; StoreFullError (with figures) otherwise."""
    free = shutil.disk_usage(root).free
    if free < needed + _SLACK:
        raise StoreFullError(errno.ENOSPC, f"not enough space in {root} for the next store "
                             f"write: it needs about {_mib(needed)}, {_mib(free)} is free; free "
                             "some space (or choose another --out) and rerun to resume")
    try:
        write()
    except Exception as exc:
        full = (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
                or "no space" in str(exc).lower() or "quota" in str(exc).lower())
        if not full:
            raise
        raise StoreFullError(errno.ENOSPC, f"the disk under {root} filled up while writing the "
                             f"store: the write needs about {_mib(needed)} "
                             f"({_mib(shutil.disk_usage(root).free)} free now). The last "
                             "complete checkpoint is kept; free some space and rerun to "
                             "resume") from exc


def _save_ranges(folder: Path, arrays: Mapping[str, np.ndarray], d_sae: int, size: int) -> None:
    """Write `[d_sae, ...]` arrays as `features_START_END.safetensors` files of `size` rows."""
    for start in range(0, d_sae, size):
        end = min(start + size, d_sae)
        part = {k: np.ascontiguousarray(v[start:end]) for k, v in arrays.items()}
        save_file(part, str(folder / S.features_filename(start, end)))


def write_tables(root: str | Path, manifest: S.Manifest,
                 tables: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    """Write the once-per-run tables (decoder logits, neighbours) of every SAE.

    Args:
        root: the store folder.
        manifest: its manifest; `tables` is set to the tables folder (commit it afterwards).
        tables: per SAE folder name, `[d_sae, ...]` arrays named in `schema.TABLE_KEYS`.
    """
    root = Path(root)
    needed = sum(a.nbytes for t in tables.values() for a in t.values())

    def write() -> None:
        with atomic_folder(root / S.TABLES_DIR, replace=True) as tmp:
            for entry in manifest.saes:
                (tmp / entry.dir).mkdir()
                _save_ranges(tmp / entry.dir, tables[entry.dir], entry.d_sae,
                             manifest.feature_shard_size)

    _guarded(root, needed, write)
    manifest.tables = S.TABLES_DIR


def stats_arrays(st: Any, window_index: np.ndarray, window_tokens: np.ndarray
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """`(summary, per_feature)` arrays of one SAE's statistics, named as in `schema`.

    `st` is a `scope.pipeline.accumulators.FeatureStats` (not imported: the writer needs no torch).
    """
    top_w, top_p = st.top_window, st.top_pos
    top_token = np.full(top_w.shape, -1, dtype=np.int32)
    if len(window_index):
        rows = np.searchsorted(window_index, top_w).clip(0, len(window_index) - 1)
        found = (top_w >= 0) & (window_index[rows] == top_w)
        top_token = np.where(found, window_tokens[rows, top_p], -1).astype(np.int32)
    summary = {S.FIRING_COUNT: st.firing_count, S.ACT_SUM_FIXED: st.act_sum_fixed,
               S.MAX_ACTIVATION: st.max_activation, S.MEAN_ACTIVATION: st.mean_activation,
               S.DENSITY: st.density, S.TOP_VALUE: st.top_value, S.TOP_TOKEN: top_token,
               S.TOKENS_COUNTED: np.asarray([st.tokens], dtype=np.int64)}
    per_feature = {S.HISTOGRAM: st.histogram, S.TOP_WINDOW: top_w, S.TOP_VALUE: st.top_value,
                   S.TOP_POS: top_p, S.TOP_ACTS: st.top_acts, S.BAND_WINDOW: st.band_window,
                   S.BAND_VALUE: st.band_value, S.BAND_POS: st.band_pos,
                   S.BAND_ACTS: st.band_acts, S.TOKEN_SKETCH: st.token_sketch}
    return summary, per_feature


def write_generation(root: str | Path, manifest: S.Manifest, stats: Mapping[str, Any],
                     window_index: np.ndarray, window_tokens: np.ndarray) -> None:
    """Write a full data generation and commit it by swapping the manifest.

    Args:
        root: the store folder.
        manifest: the manifest to commit; its `data` is set to the new generation's name.
        stats: per SAE folder name, its statistics.
        window_index: `[n_windows]` int64 global window indices, ascending.
        window_tokens: `[n_windows, ctx]` int32 token ids of those windows.
    """
    root = Path(root)
    previous = manifest.data
    number = int(previous[len(S.GEN_PREFIX):]) + 1 if previous else 0
    gen_name = S.generation_name(number)
    window_index = np.ascontiguousarray(window_index, dtype=np.int64)
    window_tokens = np.ascontiguousarray(window_tokens, dtype=np.int32)
    arrays = {d: stats_arrays(st, window_index, window_tokens) for d, st in stats.items()}
    needed = window_index.nbytes + window_tokens.nbytes + sum(
        a.nbytes for summ, per in arrays.values() for a in (*summ.values(), *per.values()))

    def write() -> None:
        with atomic_folder(root / gen_name, replace=True) as tmp:
            save_file({S.WINDOW_INDEX: window_index, S.WINDOW_TOKENS: window_tokens},
                      str(tmp / S.WINDOWS))
            for entry in manifest.saes:
                summary, per_feature = arrays[entry.dir]
                folder = tmp / S.SAES_DIR / entry.dir
                folder.mkdir(parents=True)
                save_file({k: np.ascontiguousarray(v) for k, v in summary.items()},
                          str(folder / S.SUMMARY))
                _save_ranges(folder, per_feature, entry.d_sae, manifest.feature_shard_size)

    _guarded(root, needed, write)
    manifest.data = gen_name
    try:
        _guarded(root, 0, lambda: write_manifest(root, manifest))
    except BaseException:
        manifest.data = previous
        raise
    for old in root.iterdir():  # keep the one before, for readers that hold it open
        if (S.is_generation(old.name) and old.is_dir() and not old.is_symlink()
                and old.name not in (gen_name, previous)):
            shutil.rmtree(old, ignore_errors=True)
