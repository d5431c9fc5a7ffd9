"""Reading a feature store: a lazy, read-only view (numpy + safetensors only).

Opening a store reads and validates the manifest; a feature reads only its own rows, on first
access of each attribute. Damage (a missing or truncated file, a manifest that is not JSON, an
unknown format version, a path that leads outside the store) raises a named `StoreError` that
names the file and what to do; a reader never writes. Format 1 stores open read-only with a
warning: their histograms and bands stop at 1e3 (`Store.histograms_may_be_clipped`).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open

from scope.errors import StoreCorruptError, StoreError, suggest
from scope.store import schema as S
from scope.store.labels import Explanation, feature_explanation, feature_label

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


@dataclass(frozen=True)
class Example:
    """One context: display strings, the feature's activation at every token, and its peak."""

    tokens: list[str]
    activations: list[float]
    max_activation: float
    max_position: int
    window: int
    """Global window index of this context in the extraction corpus."""


@dataclass(frozen=True)
class Band:
    """Contexts whose max activation falls in `[low, high)`, sampled deterministically."""

    low: float
    high: float
    examples: list[Example]


class Feature:
    """One feature of one SAE; reads only its own rows, on first access of each attribute."""

    def __init__(self, store: Store, sae_name: str, index: int) -> None:
        self._store, self.sae_name, self.index = store, sae_name, index
        d_sae = store.n_features(sae_name)
        if not 0 <= index < d_sae:
            raise StoreError(f"feature {index} out of range for {sae_name!r} (d_sae={d_sae})")

    @cached_property
    def _rows(self) -> dict[str, np.ndarray]:
        return self._store._feature_rows(self.sae_name, self.index)

    @cached_property
    def _tables(self) -> dict[str, np.ndarray]:
        return self._store._table_rows(self.sae_name, self.index)

    @cached_property
    def _summary(self) -> dict[str, Any]:
        return self._store._summary_row(self.sae_name, self.index)

    @property
    def firing_count(self) -> int:
        return int(self._summary[S.FIRING_COUNT])

    @property
    def density(self) -> float:
        return float(self._summary[S.DENSITY])

    @property
    def max_activation(self) -> float:
        return float(self._summary[S.MAX_ACTIVATION])

    @property
    def mean_activation(self) -> float:
        return float(self._summary[S.MEAN_ACTIVATION])

    @property
    def histogram(self) -> tuple[np.ndarray, np.ndarray]:
        """`(counts [n_bins], bin_edges [n_bins + 1])` of nonzero activations (log-spaced)."""
        return self._rows[S.HISTOGRAM], self._store.histogram_edges

    @cached_property
    def top_examples(self) -> list[Example]:
        """The top-k contexts by max activation, best first (BOS excluded from the ranking)."""
        r = self._rows
        return self._store._examples(r[S.TOP_WINDOW], r[S.TOP_VALUE], r[S.TOP_POS],
                                     r[S.TOP_ACTS])

    @cached_property
    def band_examples(self) -> list[Band]:
        """Sampled contexts per activation band, highest band first; top contexts left out."""
        r, edges = self._rows, self._store.band_edges
        top = {e.window for e in self.top_examples}
        bands = []
        for b in range(r[S.BAND_WINDOW].shape[0] - 1, -1, -1):
            keep = np.array([w >= 0 and w not in top for w in r[S.BAND_WINDOW][b]], dtype=bool)
            if keep.any():
                ex = self._store._examples(r[S.BAND_WINDOW][b][keep], r[S.BAND_VALUE][b][keep],
                                           r[S.BAND_POS][b][keep], r[S.BAND_ACTS][b][keep])
                ex.sort(key=lambda e: (-e.max_activation, e.window))
                bands.append(Band(float(edges[b]), float(edges[b + 1]), ex))
        return bands

    @cached_property
    def top_logits(self) -> list[tuple[str, float]]:
        """The 10 tokens whose logits the decoder direction raises most, largest first."""
        t = self._tables
        return self._store._logits(t[S.LOGIT_POS_IDS], t[S.LOGIT_POS_VALS])

    @cached_property
    def bottom_logits(self) -> list[tuple[str, float]]:
        """The 10 tokens whose logits the decoder direction lowers most, most negative first."""
        t = self._tables
        return self._store._logits(t[S.LOGIT_NEG_IDS], t[S.LOGIT_NEG_VALS])

    @cached_property
    def neighbours(self) -> list[tuple[int, float]]:
        """The most similar features of the same SAE by decoder cosine: `(index, cosine)`, best
        first, ties by lower index (empty for format 1 stores)."""
        t = self._tables
        if S.NEIGHBOUR_INDEX not in t:
            return []
        return [(int(i), float(c)) for i, c in zip(t[S.NEIGHBOUR_INDEX], t[S.NEIGHBOUR_COSINE],
                                                    strict=True) if i >= 0]

    @cached_property
    def fires_on(self) -> list[tuple[str, float]]:
        """The tokens this feature fires on most: `(token string, share of its firings)`, best
        first (up to 10; ties by token id; empty for format 1 stores).

        Counts come from a count-min sketch (exactly mergeable, order-independent): a share is
        never below the true one and exceeds it by about `1 / width` of the other firings at
        most; candidates are the tokens the feature fired on in its stored contexts.
        """
        if S.TOKEN_SKETCH not in self._rows or self.firing_count == 0:
            return []
        r, sketch = self._rows, self._rows[S.TOKEN_SKETCH]
        cand = set()
        for w_key, a_key in ((S.TOP_WINDOW, S.TOP_ACTS), (S.BAND_WINDOW, S.BAND_ACTS)):
            windows, acts = r[w_key].reshape(-1), r[a_key].reshape(-1, r[a_key].shape[-1])
            for w, a in zip(windows, acts, strict=True):
                if w >= 0:
                    toks = self._store._window_tokens(int(w))
                    cand.update(toks[a > 0].tolist())
        if not cand:
            return []
        ids = np.array(sorted(cand), dtype=np.int64)
        depth, width = sketch.shape
        est = np.min([sketch[row][S.token_sketch_buckets(ids, np.int64(self.index), row, width)]
                      for row in range(depth)], axis=0)
        order = np.lexsort((ids, -est))[:10]
        vocab = self._store.vocab
        return [(vocab[t] if 0 <= t < len(vocab) else f"<{t}>",
                 min(1.0, float(est[j]) / self.firing_count))
                for j, t in zip(order, ids[order].tolist(), strict=True) if est[j] > 0]

    @property
    def label(self) -> str:
        """Its explanation's text when one is stored, else the automatic label (scope.store.labels)."""
        return feature_label(self)

    @property
    def explanation(self) -> Explanation | None:
        """The stored explanation (`.text`, `.score`, `.explainer`), or None."""
        return feature_explanation(self)

    @property
    def neuronpedia_url(self) -> str | None:
        from scope.saes.releases import neuronpedia_url

        return neuronpedia_url(self._store.sae_info(self.sae_name).get("neuronpedia_id"),
                               self.index)

    def __repr__(self) -> str:
        return (f"Feature({self.sae_name!r}, {self.index}, density={self.density:.3g}, "
                f"max={self.max_activation:.3g})")


class Store:
    """Read-only view of a feature store. Opening reads the manifest only."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        info = read_manifest(self.path)
        if info is None:
            raise StoreError(f"{self.path} is not a feature store (no {S.MANIFEST}); make one "
                             "with `scope extract --out DIR` or scope.extract(...)")
        self.info: S.Manifest = info
        self.manifest: dict = info.to_dict()
        if info.data is None:
            raise StoreError(f"store {self.path} holds no data yet (the extraction made no "
                             "checkpoint); rerun the extract command to resume it")
        self._data = self.path / info.data
        if not self._data.is_dir():
            raise StoreCorruptError(f"store {self.path}: data folder {self._data} is missing; "
                                    "the store is corrupt: delete it and extract again")
        if info.tables is not None and not (self.path / info.tables).is_dir():
            raise StoreCorruptError(f"store {self.path}: tables folder "
                                    f"{self.path / info.tables} is missing; the store is "
                                    "corrupt: delete it and extract again")
        self._by_name = {s.name: s for s in info.saes}
        self._handles: dict[Path, Any] = {}
        self._summaries: dict[str, dict[str, np.ndarray]] = {}
        if self.histograms_may_be_clipped:
            warnings.warn(f"{self.path} is a format {info.format_version} store (read-only): "
                          "its histograms and activation bands stop at 1e3, so larger "
                          "activations are piled into the last bin; extract it again for "
                          "format 2", UserWarning, stacklevel=3)

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

    def _corrupt(self, path: Path, exc: BaseException) -> StoreCorruptError:
        return StoreCorruptError(f"store {self.path}: {path} is unreadable ({exc}); the store "
                                 "is corrupt (a truncated copy or an interrupted download?): "
                                 "delete it and extract again")

    def _handle(self, path: Path) -> Any:
        if path not in self._handles:
            if not path.is_file():
                raise StoreCorruptError(f"store {self.path}: {path} is missing; delete the "
                                        "store and extract again")
            try:
                self._handles[path] = safe_open(str(path), framework="np")
            except Exception as exc:
                raise self._corrupt(path, exc) from exc
        return self._handles[path]

    def _read(self, path: Path, keys: list[str] | None = None,
              row: slice | None = None) -> dict[str, np.ndarray]:
        """Arrays of one file: all of them, or one row range of each."""
        h = self._handle(path)
        try:
            names = [k for k in h.keys() if keys is None or k in keys]  # noqa: SIM118
            if row is None:
                return {k: h.get_tensor(k) for k in names}
            return {k: h.get_slice(k)[row] for k in names}
        except Exception as exc:
            raise self._corrupt(path, exc) from exc

    def _sae_folder(self, name: str) -> Path:
        return self._data / S.SAES_DIR / self._by_name[name].dir

    def _summary(self, name: str) -> dict[str, np.ndarray]:
        if name not in self._summaries:
            self.sae_info(name)
            self._summaries[name] = self._read(self._sae_folder(name) / S.SUMMARY)
        return self._summaries[name]

    def _summary_row(self, name: str, i: int) -> dict[str, Any]:
        if name in self._summaries:
            return {k: v[i] for k, v in self._summaries[name].items() if k not in S.SCALAR_KEYS}
        path = self._sae_folder(name) / S.SUMMARY
        keys = [k for k in self._handle(path).keys() if k not in S.SCALAR_KEYS]  # noqa: SIM118
        return {k: v[0] for k, v in self._read(path, keys, slice(i, i + 1)).items()}

    def _range_file(self, folder: Path, name: str, i: int) -> tuple[Path, int]:
        size = int(self.info.feature_shard_size)
        start = i // size * size
        end = min(start + size, self.n_features(name))
        return folder / S.features_filename(start, end), i - start

    def _feature_rows(self, name: str, i: int) -> dict[str, np.ndarray]:
        path, j = self._range_file(self._sae_folder(name), name, i)
        return {k: v[0] for k, v in self._read(path, row=slice(j, j + 1)).items()}

    def _table_rows(self, name: str, i: int) -> dict[str, np.ndarray]:
        if self.info.tables is None:  # format 1: the logit tables sit in the data files
            return self._feature_rows(name, i)
        folder = self.path / self.info.tables / self._by_name[name].dir
        path, j = self._range_file(folder, name, i)
        return {k: v[0] for k, v in self._read(path, row=slice(j, j + 1)).items()}

    @cached_property
    def _window_index(self) -> np.ndarray:
        return self._read(self._data / S.WINDOWS, [S.WINDOW_INDEX])[S.WINDOW_INDEX]

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
