"""The feature list: every feature of one SAE as a table to sort, filter and search by label.

`FeatureTable.build(store, sae)` reads the store's `[d_sae]` summary arrays and every feature's
label (its explanation, else the automatic label) once; `query` then sorts by any column,
filters by density range and hides dense / rare features, ranks label text with BM25 (the
`bm25s` library) and returns one page. Built once, a query over 131,072 features takes a few
milliseconds to tens of milliseconds (benchmarks/bench_dashboard.py measures it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from scope.store import labels as L

log = logging.getLogger(__name__)

#: sortable columns (besides "relevance" when a text query is given)
COLUMNS = ("index", "density", "firing_count", "max_activation", "mean_activation", "score")


@dataclass(frozen=True)
class Row:
    index: int
    label: str
    explanation: str | None
    score: float | None
    density: float
    firing_count: int
    max_activation: float
    mean_activation: float
    relevance: float | None = None


@dataclass(frozen=True)
class Page:
    """One page of a query: its rows, how many features matched, and the page bounds."""

    rows: list[Row]
    total: int
    page: int
    page_size: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.page_size))


def bulk_fires_on(store, sae: str, n: int = L.LABEL_TOKENS) -> list[list[tuple[str, float]]]:
    """Per feature, `(token, share of its firings)` best first, for labelling every feature at
    once: `labels.token_shares` over the summary's peak tokens, with the token sketch's counts
    read one range file at a time (format 2), exactly as `Feature.label` computes them."""
    summ = store._summary(sae)
    tokens = np.asarray(summ["top_token"]).astype(np.int64)
    values = np.asarray(summ["top_value"])
    counts = np.asarray(store.firing_counts(sae), dtype=np.float64)
    est = _sketch_estimates(store, sae, tokens)
    vocab = store.vocab
    return [L.token_shares(tokens[i], values[i], counts[i], vocab,
                           None if est is None else est[i], n) for i in range(len(tokens))]


def _sketch_estimates(store, sae: str, tokens: np.ndarray) -> np.ndarray | None:
    """Count-min estimates `[d_sae, k]` of each feature's firings on each of `tokens`, or None
    for a store without a token sketch (format 1)."""
    try:
        from scope.store import schema as S

        if getattr(store, "format_version", 1) < 2:
            return None
        folder = store._sae_folder(sae)
        size = int(store.info.feature_shard_size)
        est = np.zeros(tokens.shape, dtype=np.float64)
        for start in range(0, len(tokens), size):
            path, _ = store._range_file(folder, sae, start)
            sketch = store._read(path, [S.TOKEN_SKETCH])[S.TOKEN_SKETCH]  # [m, depth, width]
            m = sketch.shape[0]
            feats = np.arange(start, start + m, dtype=np.int64)[:, None]
            est[start:start + m] = L.sketch_estimates(sketch, tokens[start:start + m], feats)
        return est
    except (AttributeError, KeyError, ImportError) as exc:
        log.info("no token sketch for %s (%s): labels use top-context shares", sae, exc)
        return None


@dataclass
class FeatureTable:
    """Columns of one SAE's features (numpy arrays, `[d_sae]`) plus their label texts."""

    density: np.ndarray
    firing_count: np.ndarray
    max_activation: np.ndarray
    mean_activation: np.ndarray
    labels: list[str]
    explanations: list[str | None]
    auto_labels: list[str]
    score: np.ndarray  # nan where unscored
    _bm25: object = field(default=None, repr=False)
    _orders: dict = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, store, sae: str) -> FeatureTable:
        """Read one SAE's columns and labels from an open store."""
        density = np.asarray(store.densities(sae), dtype=np.float64)
        count = np.asarray(store.firing_counts(sae), dtype=np.int64)
        fires = bulk_fires_on(store, sae)
        exps = L.labels_for(store.path).for_sae(sae)
        labels, texts, autos = [], [], []
        score = np.full(len(density), np.nan)
        for i in range(len(density)):
            e = exps.get(i)
            auto = L.auto_label(float(density[i]), int(count[i]), fires[i])
            autos.append(auto)
            if e is not None and e.text.strip():
                labels.append(e.text)
                texts.append(e.text)
                if e.score is not None:
                    score[i] = e.score
            else:
                labels.append(auto)
                texts.append(None)
        return cls(density, count, np.asarray(store.max_activations(sae), dtype=np.float64),
                   np.asarray(store.mean_activations(sae), dtype=np.float64), labels, texts, autos,
                   score)

    def __len__(self) -> int:
        return len(self.density)

    def _column(self, name: str) -> np.ndarray:
        if name == "index":
            return np.arange(len(self))
        if name not in COLUMNS:
            raise ValueError(f"cannot sort by {name!r}; columns: {', '.join(COLUMNS)}")
        return getattr(self, name)

    def _order(self, column: str, descending: bool) -> np.ndarray:
        key = (column, descending)
        if key not in self._orders:  # stable; unscored (nan) last either way
            col = self._column(column).astype(np.float64)
            col = np.where(np.isnan(col), -np.inf if descending else np.inf, col)
            self._orders[key] = np.argsort(-col if descending else col, kind="stable")
        return self._orders[key]

    def search_scores(self, text: str) -> np.ndarray:
        """BM25 relevance of every feature's label (and explanation) to `text`, `[d_sae]`."""
        import bm25s

        if self._bm25 is None:
            corpus = [f"{exp or ''} {auto}" for exp, auto in zip(self.explanations,
                                                                 self.auto_labels, strict=True)]
            tok = bm25s.tokenize(corpus, stopwords=None, show_progress=False)
            model = bm25s.BM25()
            model.index(tok, show_progress=False)
            self._bm25 = (model, tok.vocab)
        model, vocab = self._bm25
        words = [w for w in bm25s.tokenize([text], stopwords=None, show_progress=False,
                                           return_ids=False)[0] if w in vocab]
        if not words:
            return np.zeros(len(self))
        return np.asarray(model.get_scores(words), dtype=np.float64)

    def mask(self, *, hide_dense: bool = True, hide_rare: bool = True, hide_dead: bool = True,
             min_density: float | None = None, max_density: float | None = None) -> np.ndarray:
        """Boolean `[d_sae]` of features that pass the filters."""
        keep = np.ones(len(self), dtype=bool)
        if hide_dead:
            keep &= self.firing_count > 0
        if hide_dense:
            keep &= self.density <= L.DENSE
        if hide_rare:
            keep &= (self.firing_count >= L.RARE) | (self.firing_count == 0)
        if min_density is not None:
            keep &= self.density >= min_density
        if max_density is not None:
            keep &= self.density <= max_density
        return keep

    def query(self, text: str = "", *, sort: str | None = None, descending: bool = True,
              page: int = 0, page_size: int = 50, **filters) -> Page:
        """Filter, rank and page the features.

        Args:
            text: words to find in labels/explanations (BM25); empty keeps every feature.
            sort: a column of COLUMNS, or "relevance" (the default when `text` is given;
                else "density").
            descending: largest first.
            page, page_size: which slice of the result to return.
            **filters: `hide_dense`, `hide_rare`, `hide_dead`, `min_density`, `max_density`
                (see `mask`).
        """
        keep = self.mask(**filters)
        rel = None
        if text.strip():
            rel = self.search_scores(text)
            keep &= rel > 0
        sort = sort or ("relevance" if rel is not None else "density")
        if sort == "relevance":
            if rel is None:
                order = self._order("density", True)
            else:
                cand = np.flatnonzero(keep)
                order = cand[np.argsort(-rel[cand] if descending else rel[cand], kind="stable")]
        else:
            order = self._order(sort, descending)
        hits = order[keep[order]]
        page = max(0, int(page))
        chosen = hits[page * page_size:(page + 1) * page_size]
        return Page([self.row(int(i), None if rel is None else float(rel[i])) for i in chosen],
                    int(hits.size), page, page_size)

    def row(self, i: int, relevance: float | None = None) -> Row:
        s = self.score[i]
        return Row(i, self.labels[i], self.explanations[i], None if np.isnan(s) else float(s),
                   float(self.density[i]), int(self.firing_count[i]),
                   float(self.max_activation[i]), float(self.mean_activation[i]), relevance)
