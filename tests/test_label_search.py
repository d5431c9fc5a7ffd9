"""The feature list's text index equals bm25s's BM25 over the labels' texts, bit for bit."""

from __future__ import annotations

import bm25s  # the reference
import numpy as np
import pytest

from scope.explore.label_search import LabelIndex, words
from scope.store import labels as L
from scope.store.bulk_labels import AutoLabels, TokenShares

# tokens a label shows oddly: newline, tab, empty, quotes, digits, a capital sigma, punctuation
VOCAB = ["<bos>", " the", "\n", "\t", "", "'", '"quoted"', " 2024", "ΣΑΣ", "...", " Cat", "cat",
         " the cat", "x", " über", "\\n"]


def _labels(n: int, seed: int) -> tuple[AutoLabels, list[str | None]]:
    rng = np.random.default_rng(seed)
    T = L.LABEL_TOKENS
    ids = rng.integers(0, len(VOCAB) + 3, (n, T))  # a few ids past the vocabulary: "<17>"
    shares = rng.choice([0.0, 0.004, 0.05, 0.094, 0.095, 0.0949999, 0.62, 0.905, 1.0], (n, T))
    shares = -np.sort(-shares, axis=1)
    size = rng.integers(0, T + 1, n)
    ids[np.arange(T) >= size[:, None]], shares[np.arange(T) >= size[:, None]] = -1, 0.0
    count = rng.choice([0, 3, 9, 10, 500, 10**6], n)
    density = rng.choice([0.0, 1e-5, 0.01, 0.0101, 0.2], n)
    texts = [None, "", "Fires on cats", "the THE the", "naïve café ΣΑΣ", "2024-ready cat"]
    expl = [texts[i] for i in rng.integers(0, len(texts), n)]
    return AutoLabels(density, count, TokenShares(ids, shares, size), VOCAB), expl


def _reference(auto: AutoLabels, expl) -> tuple[object, dict]:
    corpus = [f"{e or ''} {a}" for e, a in zip(expl, auto, strict=True)]
    tok = bm25s.tokenize(corpus, stopwords=None, show_progress=False)
    model = bm25s.BM25()
    model.index(tok, show_progress=False)
    return model, tok.vocab


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_equal_bm25s_on_the_label_texts(seed):
    auto, expl = _labels(400, seed)
    model, vocab = _reference(auto, expl)
    index = LabelIndex.of_labels(auto, expl)
    assert set(index.vocab) == set(vocab) - {""}  # bm25s adds "" after indexing, for queries
    queries = list(vocab) + ["the cat", "cat the cat", "single token", "never fired", "62 100",
                             "no statistics at all", "CAT", "zzz unknown"]
    for q in queries:
        known = [w for w in words(q) if w in vocab]
        want = (np.asarray(model.get_scores(known), dtype=np.float64) if known
                else np.zeros(len(auto)))
        got = index.scores(q)
        assert np.array_equal(got, want), q


def test_every_label_piece_reaches_the_index():
    """Each kind of piece (flags, dead and empty labels, shares of 10% or more, tokens,
    explanations) puts its words in exactly the documents whose text holds them."""
    auto, expl = _labels(200, 3)
    texts = [f"{e or ''} {a}" for e, a in zip(expl, auto, strict=True)]
    index = LabelIndex.of_labels(auto, expl)
    for word in ("dense", "rare", "single", "token", "never", "statistics", "62", "100",
                 "cat", "quoted", "fires", "café"):
        holds = np.array([word in words(t) for t in texts])
        assert holds.any(), word  # the fixture exercises it
        assert np.array_equal(index.scores(word) > 0, holds), word


def test_empty_and_all_dead():
    dead = AutoLabels(np.zeros(3), np.zeros(3, dtype=np.int64),
                      TokenShares(np.full((3, 3), -1), np.zeros((3, 3)), np.zeros(3, dtype=int)),
                      VOCAB)
    index = LabelIndex.of_labels(dead, [None] * 3)
    assert np.array_equal(index.scores("never fired"), index.scores("fired never"))
    assert index.scores("never").min() > 0 and not index.scores("cat").any()
