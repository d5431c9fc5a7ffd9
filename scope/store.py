"""The feature store on disk: atomic writes and a lazy, read-only view.

A store is a folder (layout in docs/store.md): `manifest.json` names the current data
generation `gen-NNNNNN/`, which holds `windows.safetensors` (token ids of every context an
example refers to) and, per SAE, `summary.safetensors` (`[d_sae]` statistics) plus
`features_<start>_<end>.safetensors` files, each holding one range of features. `vocab.json`
maps token ids to display strings, so reading needs neither a model nor a tokenizer.

Writing a generation then swapping the manifest (temp file + rename) keeps the store consistent
whatever moment a run is killed at. This module knows numpy, safetensors and the standard
library only: it knows neither the model nor the SAE.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from scope.atomic import atomic_write, atomic_write_text
from scope.errors import StoreError
from scope.labels import Explanation, feature_explanation, feature_label

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
VOCAB = "vocab.json"
WINDOWS = "windows.safetensors"
SUMMARY = "summary.safetensors"
SAES_DIR = "saes"
GEN_PREFIX = "gen-"
FEATURES_GLOB = "features_*.safetensors"
STATUS_PARTIAL = "partial"
STATUS_COMPLETE = "complete"
NEURONPEDIA = "https://www.neuronpedia.org"
#: arrays in summary.safetensors (all others with a leading [d_sae] axis go to range files)
#: one-element arrays in summary.safetensors (not per feature)
SCALAR_KEYS = ("tokens_counted",)
SUMMARY_KEYS = ("firing_count", "act_sum_fixed", "max_activation", "mean_activation",
                "density", "top_value", "top_token", *SCALAR_KEYS)


def features_filename(start: int, end: int) -> str:
    """Name of the file holding features `start <= i < end`."""
    return f"features_{start:06d}_{end:06d}.safetensors"


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------


def atomic_save_arrays(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Save numpy arrays as one safetensors file, atomically."""
    atomic_write(path, lambda tmp: save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, tmp))


def read_manifest(root: str | os.PathLike) -> dict | None:
    """The manifest of the store at `root`, or None when there is none."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreError(f"{path} is unreadable ({exc}); the store is corrupt: delete "
                         f"{root} and extract again") from exc
    if not isinstance(manifest, dict) or "format_version" not in manifest:
        raise StoreError(f"{path} is not a scope store manifest")
    if int(manifest["format_version"]) > FORMAT_VERSION:
        raise StoreError(f"{root} has store format {manifest['format_version']}, newer than this "
                         f"scope reads ({FORMAT_VERSION}); upgrade scope")
    return manifest


def write_manifest(root: str | os.PathLike, manifest: Mapping[str, Any]) -> None:
    """Write the manifest atomically (the commit point of every store write)."""
    atomic_write_text(Path(root) / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))


def write_generation(
    root: str | os.PathLike,
    manifest: dict,
    saes: Mapping[str, tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]]],
    window_index: np.ndarray,
    window_tokens: np.ndarray,
    shard_size: int,
) -> None:
    """Write a full data generation and commit it by swapping the manifest.

    Args:
        root: the store folder.
        manifest: the manifest to commit; its `data` key is set to the new generation's name.
        saes: per SAE folder name, `(summary arrays [d_sae...], per-feature arrays [d_sae, ...])`.
        window_index: `[n_windows]` int64 global window indices, ascending.
        window_tokens: `[n_windows, ctx]` int32 token ids of those windows.
        shard_size: features per range file.
    """
    root = Path(root)
    previous = manifest.get("data")
    number = int(previous[len(GEN_PREFIX):]) + 1 if previous else 0
    gen_name = f"{GEN_PREFIX}{number:06d}"
    gen = root / gen_name
    if gen.exists():
        shutil.rmtree(gen)
    gen.mkdir(parents=True)
    save_file({"window_index": np.ascontiguousarray(window_index, dtype=np.int64),
               "window_tokens": np.ascontiguousarray(window_tokens, dtype=np.int32)},
              str(gen / WINDOWS))
    for sae_dir, (summary, per_feature) in saes.items():
        folder = gen / SAES_DIR / sae_dir
        folder.mkdir(parents=True)
        save_file({k: np.ascontiguousarray(v) for k, v in summary.items()}, str(folder / SUMMARY))
        d_sae = len(next(iter(summary.values())))
        for start in range(0, d_sae, shard_size):
            end = min(start + shard_size, d_sae)
            part = {k: np.ascontiguousarray(v[start:end]) for k, v in per_feature.items()}
            save_file(part, str(folder / features_filename(start, end)))
    manifest["data"] = gen_name
    write_manifest(root, manifest)
    for old in root.glob(f"{GEN_PREFIX}*"):  # keep the one before, for readers that hold it open
        if old.name not in (gen_name, previous):
            shutil.rmtree(old, ignore_errors=True)


def load_sae_arrays(root: str | os.PathLike, manifest: Mapping[str, Any], sae_dir: str
                    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Read one SAE's full arrays back: `(summary, per_feature)` (for resuming and merging)."""
    folder = _data_dir(Path(root), manifest) / SAES_DIR / sae_dir
    summary = load_file(str(folder / SUMMARY))
    parts = [load_file(str(p)) for p in sorted(folder.glob(FEATURES_GLOB))]
    per_feature = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
    return summary, per_feature


def load_windows(root: str | os.PathLike, manifest: Mapping[str, Any]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """`(window_index [n], window_tokens [n, ctx])` of the current generation."""
    data = load_file(str(_data_dir(Path(root), manifest) / WINDOWS))
    return data["window_index"], data["window_tokens"]


def _data_dir(root: Path, manifest: Mapping[str, Any]) -> Path:
    data = manifest.get("data")
    if not data:
        raise StoreError(f"store {root} holds no data yet (the extraction made no checkpoint); "
                         "rerun the extract command to resume it")
    path = root / data
    if not path.is_dir():
        raise StoreError(f"store {root}: data folder {data} is missing; the store is corrupt: "
                         "delete it and extract again")
    return path


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------


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
    def _summary(self) -> dict[str, Any]:
        return self._store._summary_row(self.sae_name, self.index)

    @property
    def firing_count(self) -> int:
        return int(self._summary["firing_count"])

    @property
    def density(self) -> float:
        return float(self._summary["density"])

    @property
    def max_activation(self) -> float:
        return float(self._summary["max_activation"])

    @property
    def mean_activation(self) -> float:
        return float(self._summary["mean_activation"])

    @property
    def histogram(self) -> tuple[np.ndarray, np.ndarray]:
        """`(counts [n_bins], bin_edges [n_bins + 1])` of nonzero activations (log-spaced)."""
        return self._rows["histogram"], self._store.histogram_edges

    @cached_property
    def top_examples(self) -> list[Example]:
        """The top-k contexts by max activation, best first (BOS excluded from the ranking)."""
        r = self._rows
        return self._store._examples(r["top_window"], r["top_value"], r["top_pos"], r["top_acts"])

    @cached_property
    def band_examples(self) -> list[Band]:
        """Sampled contexts per activation band, highest band first; top contexts left out."""
        r, edges = self._rows, self._store.band_edges
        top = {e.window for e in self.top_examples}
        bands = []
        for b in range(r["band_window"].shape[0] - 1, -1, -1):
            keep = np.array([w >= 0 and w not in top for w in r["band_window"][b]], dtype=bool)
            if keep.any():
                ex = self._store._examples(r["band_window"][b][keep], r["band_value"][b][keep],
                                           r["band_pos"][b][keep], r["band_acts"][b][keep])
                ex.sort(key=lambda e: (-e.max_activation, e.window))
                bands.append(Band(float(edges[b]), float(edges[b + 1]), ex))
        return bands

    @cached_property
    def top_logits(self) -> list[tuple[str, float]]:
        """The 10 tokens whose logits the decoder direction raises most, largest first."""
        return self._store._logits(self._rows["logit_pos_ids"], self._rows["logit_pos_vals"])

    @cached_property
    def bottom_logits(self) -> list[tuple[str, float]]:
        """The 10 tokens whose logits the decoder direction lowers most, most negative first."""
        return self._store._logits(self._rows["logit_neg_ids"], self._rows["logit_neg_vals"])

    @property
    def label(self) -> str:
        """Its explanation's text when one is stored, else the automatic label (scope.labels)."""
        return feature_label(self)

    @property
    def explanation(self) -> Explanation | None:
        """The stored explanation (`.text`, `.score`, `.explainer`), or None."""
        return feature_explanation(self)

    @property
    def neuronpedia_url(self) -> str | None:
        npid = self._store.sae_info(self.sae_name).get("neuronpedia_id")
        return f"{NEURONPEDIA}/{npid}/{self.index}" if npid else None

    def __repr__(self) -> str:
        return (f"Feature({self.sae_name!r}, {self.index}, density={self.density:.3g}, "
                f"max={self.max_activation:.3g})")


class Store:
    """Read-only view of a feature store. Opening reads the manifest only."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        manifest = read_manifest(self.path)
        if manifest is None:
            raise StoreError(f"{self.path} is not a feature store (no {MANIFEST}); make one with "
                             "`scope extract --out DIR` or scope.extract(...)")
        self.manifest: dict = manifest
        self._data = _data_dir(self.path, manifest)
        self._by_name = {s["name"]: s for s in manifest["saes"]}
        self._handles: dict[Path, Any] = {}
        self._summaries: dict[str, dict[str, np.ndarray]] = {}

    def __repr__(self) -> str:
        return (f"Store({str(self.path)!r}, status={self.manifest.get('status')}, "
                f"saes={self.sae_names}, tokens={self.manifest.get('tokens')})")

    @property
    def sae_names(self) -> list[str]:
        return [s["name"] for s in self.manifest["saes"]]

    @property
    def status(self) -> str:
        return self.manifest.get("status", STATUS_PARTIAL)

    def sae_info(self, name: str) -> dict:
        """hook_name, d_in, d_sae, release, sae_id, spec, neuronpedia_id, model_name, ..."""
        try:
            return dict(self._by_name[name])
        except KeyError:
            from scope.errors import suggest

            raise StoreError(f"store {self.path} has no SAE {name!r}; it has "
                             f"{self.sae_names}.{suggest(name, self.sae_names)}") from None

    def n_features(self, name: str) -> int:
        return int(self.sae_info(name)["d_sae"])

    def densities(self, name: str) -> np.ndarray:
        """`[d_sae]` firing fraction over non-BOS tokens."""
        return self._summary(name)["density"]

    def max_activations(self, name: str) -> np.ndarray:
        """`[d_sae]` largest activation seen."""
        return self._summary(name)["max_activation"]

    def mean_activations(self, name: str) -> np.ndarray:
        """`[d_sae]` mean over nonzero activations."""
        return self._summary(name)["mean_activation"]

    def firing_counts(self, name: str) -> np.ndarray:
        """`[d_sae]` number of non-BOS tokens the feature fired on."""
        return self._summary(name)["firing_count"]

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
        hit = np.isin(summ["top_token"], np.asarray(ids))
        score = np.where(hit, summ["top_value"], 0.0).max(axis=1)
        order = np.lexsort((np.arange(len(score)), -score))
        return [(int(i), float(score[i])) for i in order[:k] if score[i] > 0]

    @cached_property
    def vocab(self) -> list[str]:
        """Display string of every token id (loaded on first use)."""
        return json.loads((self.path / VOCAB).read_text(encoding="utf-8"))

    @cached_property
    def histogram_edges(self) -> np.ndarray:
        return np.asarray(self.manifest["histogram_edges"], dtype=np.float64)

    @cached_property
    def band_edges(self) -> np.ndarray:
        return np.asarray(self.manifest["band_edges"], dtype=np.float64)

    # -- internals ------------------------------------------------------------------------------

    def _handle(self, path: Path) -> Any:
        if path not in self._handles:
            if not path.is_file():
                raise StoreError(f"store {self.path}: {path.name} is missing; delete the store "
                                 "and extract again")
            self._handles[path] = safe_open(str(path), framework="np")
        return self._handles[path]

    def _sae_folder(self, name: str) -> Path:
        return self._data / SAES_DIR / self.sae_info(name)["dir"]

    def _summary(self, name: str) -> dict[str, np.ndarray]:
        if name not in self._summaries:
            h = self._handle(self._sae_folder(name) / SUMMARY)
            self._summaries[name] = {k: h.get_tensor(k) for k in h.keys()}  # noqa: SIM118
        return self._summaries[name]

    def _summary_row(self, name: str, i: int) -> dict[str, Any]:
        if name in self._summaries:
            return {k: v[i] for k, v in self._summaries[name].items() if k not in SCALAR_KEYS}
        h = self._handle(self._sae_folder(name) / SUMMARY)
        return {k: h.get_slice(k)[i : i + 1][0] for k in h.keys() if k not in SCALAR_KEYS}

    def _feature_rows(self, name: str, i: int) -> dict[str, np.ndarray]:
        size = int(self.manifest["feature_shard_size"])
        start = i // size * size
        end = min(start + size, self.n_features(name))
        h = self._handle(self._sae_folder(name) / features_filename(start, end))
        j = i - start
        return {k: h.get_slice(k)[j : j + 1][0] for k in h.keys()}  # noqa: SIM118

    @cached_property
    def _window_index(self) -> np.ndarray:
        return self._handle(self._data / WINDOWS).get_tensor("window_index")

    def _window_tokens(self, window: int) -> np.ndarray:
        row = int(np.searchsorted(self._window_index, window))
        if row >= len(self._window_index) or self._window_index[row] != window:
            raise StoreError(f"store {self.path}: window {window} is missing; the store is corrupt")
        return self._handle(self._data / WINDOWS).get_slice("window_tokens")[row : row + 1][0]

    def _examples(self, windows, values, positions, acts) -> list[Example]:
        vocab, out = self.vocab, []
        for w, v, p, a in zip(windows, values, positions, acts, strict=True):
            if w < 0:
                continue
            toks = self._window_tokens(int(w))
            out.append(Example([vocab[t] if 0 <= t < len(vocab) else f"<{t}>" for t in toks],
                               a.astype(np.float32).tolist(), float(v), int(p), int(w)))
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
        A `Store`; raises `StoreError` when the folder is not a store or is corrupt.
    """
    return Store(path)
