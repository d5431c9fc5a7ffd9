"""The feature list: every feature of one SAE as a table to sort, filter and search by label.

`FeatureTable.build(store, sae)` reads the store's `[d_sae]` summary arrays and explanations;
`query` then sorts by any column, filters by density range and hides dense / rare features,
ranks label text with BM25 (bm25s's scores, indexed from the labels' pieces: `label_search`)
and returns one page. Automatic labels and the token shares behind them are computed lazily
(`bulk_labels.LazyShares`, blocks of up to 1,024 rows inside one range file): a page computes
the blocks its rows fall in, reading only those rows' token sketches; the text index, `specificity` and `most_specific` compute every
block once. Built once, a query over 131,072 features takes a few milliseconds to tens of
milliseconds (benchmarks/bench_dashboard.py). At 1,048,576 features (bench_scale's synthetic
store, 2-core machine shared and CPU-steal heavy, CPU time of a fresh process, paired runs)
open + build measured 96-136 ms and build + first page (any sort) 206-318 ms, mostly under
300 ms, where the eager build measured 364-602 ms and build + first page 482-872 ms. A first
page costs its sort (~100 ms at 1M) plus ~50 blocks (~70 ms: opening ~50 range files is most
of it); page 1000 of a sorted list 30-60 ms. The first text query computes every block's shares
and builds the BM25 index from the labels' pieces (2.5 s at 1M, once per table and server;
writing every label out and indexing the texts with bm25s took 26 s); later queries ~4 ms.

Rules a reader can rely on:
- a text query ranks by relevance (BM25) unless another column is asked for;
- sorting by max or mean activation trusts a feature only over `TRUST_FIRINGS` firings or more
  (`min_firings`): a max over a dozen firings is one of a dozen samples, and equals the mean;
- `token_search` ranks features by how specific they are to a token: the share of the
  feature's firings that land on it times the share of the token's occurrences the feature
  fires on (not by raw activation, which a dense whitespace feature wins everywhere);
- `most_specific` (the dashboard's home feature) is the live, non-dense feature with the
  largest `specificity`: its top token's share of its firings, shrunk toward 0 for features
  with few firings (`share * n / (n + RARE)`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from scope.errors import StoreError
from scope.explore.column_order import stable_argsort
from scope.explore.label_search import LabelIndex
from scope.explore.list_shares import (  # noqa: F401 (bulk_*: kept importable from here)
    bulk_fires_on,
    bulk_shares,
    lazy_shares,
)
from scope.store import labels as L
from scope.store.bulk_labels import AutoLabels, LabelColumn, LazyShares, word_tokens

log = logging.getLogger(__name__)

#: sortable columns (besides "relevance" when a text query is given)
COLUMNS = ("index", "density", "firing_count", "max_activation", "mean_activation", "score")
#: columns whose value is one sample's worth for a feature with few firings
SAMPLE_COLUMNS = ("max_activation", "mean_activation")
#: sorting by a SAMPLE_COLUMNS column hides features with fewer firings than this (by default)
TRUST_FIRINGS = 50


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


def _word_flags(vocab: Sequence[str], top: np.ndarray) -> np.ndarray:
    """`[d_sae]` bool: feature i's top token `top[i]` (-1: none) is a word (`word_tokens`). The
    vocabulary strings are read only for the ids that occur; "<id>" past it is no word."""
    slot = top + 1  # slot 0: no token; len(vocab) + 1: past the vocabulary
    np.clip(slot, 0, len(vocab) + 1, out=slot)
    seen = np.zeros(len(vocab) + 2, dtype=bool)
    seen[slot] = True
    seen[[0, -1]] = False
    ids = np.flatnonzero(seen[1:-1])
    is_word = np.zeros(len(vocab) + 2, dtype=bool)
    is_word[ids + 1] = word_tokens([vocab[t] for t in ids.tolist()])
    return is_word[slot]


@dataclass
class FeatureTable:
    """Columns of one SAE's features (numpy arrays, `[d_sae]`) plus their label texts.

    `labels`, `explanations` and `auto_labels` are sequences indexed by feature; automatic
    labels are made when a row is read (scope.store.bulk_labels), and the label token shares
    behind them (`shares`) block by block when a row of the block is first needed: building
    the table of a 1,048,576-feature SAE reads arrays, a page computes the blocks of its rows,
    and only what reads every row (the text index, `top_share` / `top_word` and so
    `specificity` / `most_specific`) computes them all, once.
    """

    density: np.ndarray
    firing_count: np.ndarray
    max_activation: np.ndarray
    mean_activation: np.ndarray
    labels: Sequence[str]
    explanations: Sequence[str | None]
    auto_labels: Sequence[str]
    score: np.ndarray  # nan where unscored
    shares: LazyShares | None = field(default=None, repr=False)  # the labels' token shares
    vocab: Sequence[str] = field(default=(), repr=False)  # the store's, to name top tokens
    _top: tuple | None = field(default=None, repr=False)  # (top_share, top_word) once made
    _index: object = field(default=None, repr=False)  # the text index, built on first search
    _orders: dict = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, store, sae: str) -> FeatureTable:
        """Read one SAE's columns and explanations from an open store (automatic labels and
        their token shares are computed when their rows are first read)."""
        density = np.asarray(store.densities(sae), dtype=np.float64)
        count = np.asarray(store.firing_counts(sae), dtype=np.int64)
        shares = lazy_shares(store, sae)
        try:
            exps = L.labels_for(store.path).for_sae(sae)
        except StoreError as exc:  # a damaged labels.json: automatic labels stand, data is fine
            log.warning("%s", exc)
            exps = {}
        texts, score = {}, np.full(len(density), np.nan)
        for i, e in exps.items():
            if 0 <= i < len(density) and e.text.strip():
                texts[i] = e.text
                if e.score is not None:
                    score[i] = e.score
        autos = AutoLabels(density, count, shares, store.vocab)
        return cls(density, count, np.asarray(store.max_activations(sae), dtype=np.float64),
                   np.asarray(store.mean_activations(sae), dtype=np.float64),
                   LabelColumn(texts, autos), LabelColumn(texts, autos, texts_only=True), autos,
                   score, shares, store.vocab)

    @property
    def top_share(self) -> np.ndarray:
        """`[d_sae]` each feature's top label token's share of its firings (0: none)."""
        return self._top_columns()[0]

    @property
    def top_word(self) -> np.ndarray:
        """`[d_sae]` bool: that token is a word (`bulk_labels.word_tokens`)."""
        return self._top_columns()[1]

    def _top_columns(self) -> tuple[np.ndarray, np.ndarray]:
        """`(top_share, top_word)`, made from every row's shares the first time (a table
        without `shares` knows no top tokens: zeros and False)."""
        if self._top is None:
            n = len(self)
            if self.shares is None:
                self._top = (np.zeros(n), np.zeros(n, dtype=bool))
            else:
                sh = self.shares.all()
                top = sh.ids[:, 0] if sh.ids.shape[1] else np.full(n, -1)
                top_share = sh.shares[:, 0] if sh.ids.shape[1] else np.zeros(n)
                self._top = (top_share, _word_flags(self.vocab, top))
        return self._top

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
            col = self._column(column).astype(np.float64)  # a copy: changed in place below
            col[np.isnan(col)] = -np.inf if descending else np.inf
            if descending:
                np.negative(col, out=col)
            self._orders[key] = stable_argsort(col)
        return self._orders[key]

    def search_scores(self, text: str) -> np.ndarray:
        """BM25 relevance of every feature's label (and explanation) to `text`, `[d_sae]` (the
        index is built on the first search: `label_search.LabelIndex`)."""
        if self._index is None:
            self._index = LabelIndex.of_labels(self.auto_labels, self.explanations)
        return self._index.scores(text)

    def specificity(self, max_density: float = L.DENSE) -> np.ndarray:
        """`[d_sae]`: the top token's share of each feature's firings, shrunk for few firings
        (`share * n / (n + RARE)`); 0 for dead features and those denser than `max_density`."""
        n = self.firing_count.astype(np.float64)
        spec = self.top_share * n / (n + L.RARE)
        return np.where((n > 0) & (self.density <= max_density), spec, 0.0)

    def most_specific(self, max_density: float = L.DENSE) -> int:
        """The dashboard's home feature: the live feature (no denser than `max_density`) with
        the largest `specificity` whose top token is a word (two letters or more); else the
        most specific of any token; else the one that fired most; else 0."""
        spec = self.specificity(max_density)
        for cand in (np.where(self.top_word, spec, 0.0), spec,
                     self.firing_count.astype(np.float64)):
            if cand.max(initial=0.0) > 0:
                return int(np.argmax(cand))  # first index among ties
        return 0

    def mask(self, *, hide_dense: bool = True, hide_rare: bool = True, hide_dead: bool = True,
             min_density: float | None = None, max_density: float | None = None,
             min_firings: int | None = None) -> np.ndarray:
        """Boolean `[d_sae]` of features that pass the filters (`min_firings`: at least that
        many firings)."""
        keep = np.ones(len(self), dtype=bool)
        if min_firings is not None:
            keep &= self.firing_count >= int(min_firings)
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
            **filters: `hide_dense`, `hide_rare`, `hide_dead`, `min_density`, `max_density`,
                `min_firings` (see `mask`; a page sorting by max or mean activation passes
                `min_firings=TRUST_FIRINGS`).
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
        if self.shares is not None:
            self.shares.need(chosen)  # the page's blocks only, consecutive ones together
        return Page([self.row(int(i), None if rel is None else float(rel[i])) for i in chosen],
                    int(hits.size), page, page_size)

    def row(self, i: int, relevance: float | None = None) -> Row:
        s = self.score[i]
        return Row(i, self.labels[i], self.explanations[i], None if np.isnan(s) else float(s),
                   float(self.density[i]), int(self.firing_count[i]),
                   float(self.max_activation[i]), float(self.mean_activation[i]), relevance)


@dataclass(frozen=True)
class TokenHit:
    """A feature that fires on a token, with how specific it is to it."""

    index: int
    firings_on_token: float  # its firings on the token (count-min estimate, format 2)
    share_of_feature: float  # ... as a share of all its firings
    share_of_token: float  # ... as a share of the token's occurrences in the corpus (estimate)
    score: float  # share_of_feature * share_of_token: the ranking key


def token_ids(store, token: str) -> list[int]:
    """Vocabulary ids whose display string is `token`, exactly or with whitespace stripped."""
    want = token.strip()
    return [i for i, s in enumerate(store.vocab) if s == token or (want and s.strip() == want)]


def token_occurrences(store, ids: list[int]) -> float:
    """Estimated occurrences of `ids` in the corpus: counted in the store's windows (BOS left
    out) and scaled by the share of the corpus's windows the store keeps (all of them for a
    small store)."""
    from scope.store import schema as S

    win = store._read(store._data / S.WINDOWS, [S.WINDOW_TOKENS])[S.WINDOW_TOKENS]
    seen = float(np.isin(win[:, 1:], np.asarray(ids)).sum())
    ctx = max(1, int(win.shape[1]))
    total_windows = float(store.manifest.get("tokens") or 0) / ctx
    return seen * max(1.0, total_windows / max(1, win.shape[0]))


def token_search(store, sae: str, token: str, k: int = 20) -> list[TokenHit]:
    """Features of `sae` ranked by how specific they are to `token`, best first.

    Candidates are the features whose stored top contexts peak on the token (exactly, or with
    whitespace stripped). For each, its firings on the token come from the store's token
    sketch (format 2; format 1: the share of its top contexts peaking there times its firing
    count). The score is `share_of_feature * share_of_token`: a feature that fires on little
    else and on most of the token's occurrences ranks first.
    """
    from scope.store import schema as S

    ids = token_ids(store, token)
    if not ids:
        return []
    summ = store._summary(sae)
    top_tok, top_val = np.asarray(summ[S.TOP_TOKEN]), np.asarray(summ[S.TOP_VALUE])
    hit = np.isin(top_tok, np.asarray(ids)) & (top_val > 0)
    cand = np.flatnonzero(hit.any(axis=1))
    if cand.size == 0:
        return []
    counts = np.asarray(store.firing_counts(sae), dtype=np.float64)
    occurrences = token_occurrences(store, ids)
    out = []
    for f in cand.tolist():
        est = _firings_on(store, sae, f, ids)
        if est is None:  # format 1: the share of its top contexts that peak on the token
            est = hit[f].sum() / max(1, (top_val[f] > 0).sum()) * counts[f]
        est = min(float(est), counts[f])
        by_feature = est / counts[f] if counts[f] > 0 else 0.0
        by_token = min(1.0, est / occurrences) if occurrences > 0 else 0.0
        out.append(TokenHit(int(f), est, by_feature, by_token, by_feature * by_token))
    out.sort(key=lambda h: (-h.score, h.index))
    return out[:k]


def _firings_on(store, sae: str, feature: int, ids: list[int]) -> float | None:
    """Count-min estimate of `feature`'s firings on any of `ids` (None without a sketch)."""
    from scope.store import schema as S

    if getattr(store, "format_version", 1) < 2:
        return None
    rows = store._feature_rows(sae, feature)
    if S.TOKEN_SKETCH not in rows:
        return None
    est = L.sketch_estimates(rows[S.TOKEN_SKETCH], np.asarray(ids), np.int64(feature))
    return float(np.asarray(est).sum())
