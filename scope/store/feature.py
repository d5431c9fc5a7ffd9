"""One feature of a store and what it shows: statistics, contexts, logits, neighbours, label.

`Feature` reads only its own rows, on first access of each attribute, through the `Store` that
made it (scope.store.reader); `Example` and `Band` are the contexts it returns. numpy only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from scope.errors import StoreChangedError, StoreCorruptError, StoreError, StoreOutsideError
from scope.store import schema as S
from scope.store.labels import (
    Explanation,
    feature_auto_label,
    feature_explanation,
    feature_label,
)

log = logging.getLogger(__name__)


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

    def __init__(self, store: Any, sae_name: str, index: int) -> None:
        """`store` is the `scope.store.reader.Store` the feature belongs to."""
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
        """Its explanation's text when one is stored, else the automatic label (scope.store.labels).

        A damaged `labels.json` does not hide the feature: its automatic label stands (with a
        warning); `explanation` raises the labels file's own error.
        """
        try:
            return feature_label(self)
        except (StoreCorruptError, StoreOutsideError, StoreChangedError):
            raise  # the store's data: not a labels problem
        except StoreError as exc:  # labels.json is damaged; the data is fine
            log.warning("%s", exc)
            return feature_auto_label(self)

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
