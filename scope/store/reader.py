"""Reading a feature store: a lazy, read-only view (numpy + safetensors only).

Opening a store reads and validates the manifest (types, ranges, unique names) and checks that
its folders stay inside the store; each data file is checked (arrays, shapes, dtypes, and the
values of the rows read: `scope.store.validate`) when it is first opened, so opening stays cheap.
Damage raises a named `StoreError` that names the file and what to do; a reader never writes.
A run that writes a new generation while a reader holds the store open is told apart from
damage: the reader raises `StoreChangedError` ("reopen it"), never "extract again". Format 1
stores open read-only with a warning: their histograms and bands stop at 1e3
(`Store.histograms_may_be_clipped`).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open

from scope.errors import StoreChangedError, StoreCorruptError, StoreError, suggest
from scope.store import schema as S
from scope.store import validate as V
from scope.store.feature import Example, Feature

log = logging.getLogger(__name__)


def read_manifest(root: str | os.PathLike) -> S.Manifest | None:
    """The validated manifest of the store at `root`, or None when there is none."""
    root = Path(root)
    path = root / S.MANIFEST
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreCorruptError(f"{path} is unreadable ({exc}); the store is corrupt: delete "
                                f"{root} and extract again") from exc
    return S.Manifest.from_dict(raw, root)


def read_vocab(root: str | os.PathLike) -> list[str]:
    """`vocab.json` of the store at `root`: the display string of every token id."""
    path = Path(root) / S.VOCAB
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreCorruptError(f"{path} is missing or unreadable ({exc}); the store is "
                                "corrupt: delete it and extract again") from exc
    if not isinstance(vocab, list):
        raise StoreCorruptError(f"{path} is not a list of token strings; extract again")
    return [str(v) for v in vocab]


class Store:
    """Read-only view of a feature store. Opening reads the manifest only."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        for attempt in range(3):
            info = read_manifest(self.path)
            if info is None:
                raise StoreError(f"{self.path} is not a feature store (no {S.MANIFEST}); make "
                                 "one with `scope extract --out DIR` or scope.extract(...)")
            try:
                self._open(info)
                break
            except StoreCorruptError:  # a run may have moved on between the two reads
                if attempt == 2 or _identity(read_manifest(self.path)) == _identity(info):
                    raise
        self._handles: dict[Path, Any] = {}
        self._checked: set[Path] = set()
        self._summaries: dict[str, dict[str, np.ndarray]] = {}
        if self.histograms_may_be_clipped:
            warnings.warn(f"{self.path} is a format {info.format_version} store (read-only): "
                          "its histograms and activation bands stop at 1e3, so larger "
                          "activations are piled into the last bin; extract it again for "
                          "format 2", UserWarning, stacklevel=3)

    def _open(self, info: S.Manifest) -> None:
        self.info: S.Manifest = info
        self.manifest: dict = info.to_dict()
        if info.data is None:
            raise StoreError(f"store {self.path} holds no data yet (the extraction made no "
                             "checkpoint); rerun the extract command to resume it")
        self._data = self.path / info.data
        check_folders(self.path, info)
        self._by_name = {s.name: s for s in info.saes}

    def __repr__(self) -> str:
        return (f"Store({str(self.path)!r}, status={self.status}, saes={self.sae_names}, "
                f"tokens={self.info.tokens})")

    @property
    def format_version(self) -> int:
        return self.info.format_version

    @property
    def histograms_may_be_clipped(self) -> bool:
        """True for format 1 stores, whose histograms and bands pile activations above 1e3
        into their last bin (and which hold no neighbours or token shares)."""
        return self.info.format_version < 2

    @property
    def sae_names(self) -> list[str]:
        return [s.name for s in self.info.saes]

    @property
    def status(self) -> str:
        return self.info.status

    def changed(self) -> bool:
        """Whether a run has written the store since this view opened it (then reopen it)."""
        try:
            return _identity(read_manifest(self.path)) != _identity(self.info)
        except StoreError:
            # gone: a run is starting the store afresh; present but unreadable: damage (a
            # run replaces the manifest atomically, so it is never seen half-written)
            return not (Path(self.path) / S.MANIFEST).is_file()

    def sae_info(self, name: str) -> dict:
        """hook_name, d_in, d_sae, release, sae_id, spec, neuronpedia_id, model_name, ..."""
        try:
            return self._by_name[name].to_dict()
        except KeyError:
            raise StoreError(f"store {self.path} has no SAE {name!r}; it has "
                             f"{self.sae_names}.{suggest(name, self.sae_names)}") from None

    def n_features(self, name: str) -> int:
        return int(self.sae_info(name)["d_sae"])

    def densities(self, name: str) -> np.ndarray:
        """`[d_sae]` firing fraction over non-BOS tokens."""
        return self._summary(name)[S.DENSITY]

    def max_activations(self, name: str) -> np.ndarray:
        """`[d_sae]` largest activation seen."""
        return self._summary(name)[S.MAX_ACTIVATION]

    def mean_activations(self, name: str) -> np.ndarray:
        """`[d_sae]` mean over nonzero activations."""
        return self._summary(name)[S.MEAN_ACTIVATION]

    def firing_counts(self, name: str) -> np.ndarray:
        """`[d_sae]` number of non-BOS tokens the feature fired on."""
        return self._summary(name)[S.FIRING_COUNT]

    def feature(self, name: str, index: int) -> Feature:
        """One feature; reads only its own rows from disk."""
        return Feature(self, name, int(index))

    def search_token(self, name: str, token: str, k: int = 20) -> list[tuple[int, float]]:
        """Features that fire most on a token: `(feature, activation)`, best first.

        A feature matches when the peak token of one of its top contexts is `token` (compared
        exactly, or with surrounding whitespace stripped); its score is the largest such peak.
        """
        ids = [i for i, s in enumerate(self.vocab) if s == token or s.strip() == token.strip()]
        if not ids:
            return []
        summ = self._summary(name)
        hit = np.isin(summ[S.TOP_TOKEN], np.asarray(ids))
        score = np.where(hit, summ[S.TOP_VALUE], 0.0).max(axis=1)
        order = np.lexsort((np.arange(len(score)), -score))
        return [(int(i), float(score[i])) for i in order[:k] if score[i] > 0]

    @cached_property
    def vocab(self) -> list[str]:
        """Display string of every token id (loaded on first use)."""
        return read_vocab(self.path)

    @cached_property
    def histogram_edges(self) -> np.ndarray:
        return np.asarray(self.info.histogram_edges, dtype=np.float64)

    @cached_property
    def band_edges(self) -> np.ndarray:
        return np.asarray(self.info.band_edges, dtype=np.float64)

    # -- internals ------------------------------------------------------------------------------

    def _damage(self, error: StoreError) -> StoreError:
        """`error`, or StoreChangedError when a run rewrote the store since it was opened (a
        file of an older generation is gone, not damaged)."""
        if not self.changed():
            return error
        return StoreChangedError(f"store {self.path} changed while it was open (a run wrote "
                                 "a new generation or started it afresh); its data is intact: "
                                 "reopen it (scope.open_store, or reload the dashboard)")

    def _handle(self, path: Path, spec: V.Spec | None = None) -> Any:
        if path not in self._handles:
            V.inside(self.path, path)
            if not path.is_file():
                raise self._damage(StoreCorruptError(
                    f"store {self.path}: {path} is missing; the store is corrupt: delete the "
                    "store and extract again"))
            try:
                handle = safe_open(str(path), framework="np")
            except Exception as exc:
                raise self._damage(self._corrupt(path, exc)) from exc
            self._handles[path] = handle
        if spec is not None and path not in self._checked:
            V.check_header(self.path, path, self._handles[path], spec,
                           strict=self.format_version >= 2)
            self._checked.add(path)
        return self._handles[path]

    def _corrupt(self, path: Path, exc: BaseException) -> StoreCorruptError:
        return StoreCorruptError(f"store {self.path}: {path} is unreadable ({exc}); the store "
                                 "is corrupt (a truncated copy or an interrupted download?): "
                                 "delete it and extract again")

    def _read(self, path: Path, keys: list[str] | None = None, row: slice | None = None,
              spec: V.Spec | None = None) -> dict[str, np.ndarray]:
        """Arrays of one file: all of them, or one row range of each."""
        h = self._handle(path, spec)
        try:
            names = [k for k in h.keys() if keys is None or k in keys]  # noqa: SIM118
            if row is None:
                return {k: h.get_tensor(k) for k in names}
            return {k: h.get_slice(k)[row] for k in names}
        except Exception as exc:
            raise self._damage(self._corrupt(path, exc)) from exc

    def _sae_folder(self, name: str) -> Path:
        return self._data / S.SAES_DIR / self._by_name[name].dir

    def _summary_file(self, name: str) -> tuple[Path, V.Spec]:
        entry = self._by_name[name]
        return self._sae_folder(name) / S.SUMMARY, V.summary_spec(self.info, entry)

    def _summary(self, name: str) -> dict[str, np.ndarray]:
        if name not in self._summaries:
            self.sae_info(name)
            path, spec = self._summary_file(name)
            arrays = self._read(path, spec=spec)
            V.check_summary(self.path, path, arrays)
            self._summaries[name] = arrays
        return self._summaries[name]

    def _summary_row(self, name: str, i: int) -> dict[str, Any]:
        if name in self._summaries:
            return {k: v[i] for k, v in self._summaries[name].items() if k not in S.SCALAR_KEYS}
        path, spec = self._summary_file(name)
        keys = [k for k in self._handle(path, spec).keys()  # noqa: SIM118
                if k not in S.SCALAR_KEYS]
        rows = self._read(path, keys, slice(i, i + 1))
        V.check_summary(self.path, path, rows)
        return {k: v[0] for k, v in rows.items()}

    def _range_file(self, folder: Path, name: str, i: int) -> tuple[Path, int]:
        size = int(self.info.feature_shard_size)
        start = i // size * size
        end = min(start + size, self.n_features(name))
        return folder / S.features_filename(start, end), i - start

    def _range_rows(self, folder: Path, name: str, i: int, spec) -> tuple[Path, dict]:
        path, j = self._range_file(folder, name, i)
        size = int(self.info.feature_shard_size)
        n = min(size, self.n_features(name) - i // size * size)
        rows = self._read(path, row=slice(j, j + 1), spec=spec(self.info, n))
        return path, rows

    def _feature_rows(self, name: str, i: int) -> dict[str, np.ndarray]:
        spec = V.features_spec
        if self.info.tables is None:  # format 1: the logit tables sit in the data files too
            spec = lambda m, n: {**V.tables_spec(m, n), **V.features_spec(m, n)}  # noqa: E731
        path, rows = self._range_rows(self._sae_folder(name), name, i, spec)
        V.check_feature_rows(self.path, path, rows, int(self.info.ctx))
        V.check_table_rows(self.path, path, rows, self.n_features(name))
        return {k: v[0] for k, v in rows.items()}

    def _table_rows(self, name: str, i: int) -> dict[str, np.ndarray]:
        if self.info.tables is None:  # format 1: the logit tables sit in the data files
            return self._feature_rows(name, i)
        folder = self.path / self.info.tables / self._by_name[name].dir
        path, rows = self._range_rows(folder, name, i, V.tables_spec)
        V.check_table_rows(self.path, path, rows, self.n_features(name))
        return {k: v[0] for k, v in rows.items()}

    def window_ids(self) -> np.ndarray:
        """Ids of the corpus windows the store keeps tokens for (the pool its examples come
        from), ascending; a read-only int64 array [n_windows].

        Raises:
            StoreCorruptError: the windows file is missing, malformed, or its ids do not ascend.
        """
        ids = np.asarray(self._window_index, dtype=np.int64).view()
        ids.flags.writeable = False
        return ids

    def window_tokens(self, window: int) -> np.ndarray:
        """The token ids [ctx] of corpus window `window` (one of `window_ids()`).

        Raises:
            StoreError: `window` is not one of the store's windows.
        """
        if isinstance(window, bool) or not isinstance(window, (int, np.integer)):
            raise StoreError(f"store {self.path}: window {window!r} is not an integer id")
        index = self._window_index
        row = int(np.searchsorted(index, window))
        if row >= len(index) or index[row] != window:
            raise StoreError(f"store {self.path}: it keeps no window {int(window)} (it has "
                             f"{len(index)} windows, ids from window_ids())")
        return self._window_tokens(int(window))

    @cached_property
    def _window_index(self) -> np.ndarray:
        path = self._data / S.WINDOWS
        index = self._read(path, [S.WINDOW_INDEX], spec=V.windows_spec(self.info))[S.WINDOW_INDEX]
        V.check_windows(self.path, path, index)
        return index

    def _window_tokens(self, window: int) -> np.ndarray:
        row = int(np.searchsorted(self._window_index, window))
        if row >= len(self._window_index) or self._window_index[row] != window:
            raise StoreCorruptError(f"store {self.path}: window {window} is missing from "
                                    f"{self._data / S.WINDOWS}; the store is corrupt: extract "
                                    "again")
        path = self._data / S.WINDOWS
        return self._read(path, [S.WINDOW_TOKENS], slice(row, row + 1))[S.WINDOW_TOKENS][0]

    def _examples(self, windows, values, positions, acts) -> list[Example]:
        vocab, out = self.vocab, []
        for w, v, p, a in zip(windows, values, positions, acts, strict=True):
            if w < 0:
                continue
            toks = self._window_tokens(int(w))
            # format 2 stores activations relative to the context's peak; format 1 absolute
            acts = a.astype(np.float32) * (np.float32(v) if self.format_version >= 2 else 1)
            out.append(Example([vocab[t] if 0 <= t < len(vocab) else f"<{t}>" for t in toks],
                               acts.tolist(), float(v), int(p), int(w)))
        return out

    def _logits(self, ids: np.ndarray, vals: np.ndarray) -> list[tuple[str, float]]:
        vocab = self.vocab
        return [(vocab[t] if 0 <= t < len(vocab) else f"<{t}>", float(v))
                for t, v in zip(ids, vals, strict=True) if t >= 0]


def check_folders(root: Path, info: S.Manifest) -> None:
    """Every folder the manifest names (its generation, tables, each SAE's folder in both)
    exists and, symlinks followed, lies inside the store (`StoreOutsideError` otherwise)."""
    data = root / info.data
    folders = [data, *(data / S.SAES_DIR / e.dir for e in info.saes)]
    if info.tables is not None:
        folders += [root / info.tables, *(root / info.tables / e.dir for e in info.saes)]
    for folder in folders:
        V.inside(root, folder)
    for folder in folders:
        if not folder.is_dir():
            raise StoreCorruptError(f"store {root}: folder {folder} is missing; the store is "
                                    "corrupt: delete it and extract again")


def _identity(info: S.Manifest | None) -> tuple:
    """What changes when a run writes a new generation or starts the store afresh."""
    return (None,) if info is None else (info.data, info.tables, info.created)


def open_store(path: str | os.PathLike) -> Store:
    """Open a feature store for reading (numpy + safetensors only; no model needed).

    Args:
        path: the folder `scope extract --out` wrote.

    Returns:
        A `Store`; raises `StoreError` (or a subclass naming the damaged file) when the folder
        is not a store, is damaged, or points outside itself. A format 1 store opens with a
        `UserWarning` and `histograms_may_be_clipped` set.
    """
    return Store(path)
