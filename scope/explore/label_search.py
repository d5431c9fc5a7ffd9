"""Text search over every feature's label and explanation: BM25 as `bm25s` scores it (its
tokeniser, the Lucene variant with k1 1.5 and b 0.75, float32 scores), indexed from the labels'
pieces.

An automatic label is its top tokens, their shares and its flags (`labels.auto_label`), so its
words are those of a few pieces, each tokenised once however many features share it: a million
labels index in seconds, where writing every label out and indexing the texts with bm25s took
~30 s. The scores equal bm25s's on the labels' texts, bit for bit (tests/test_label_search.py).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

from scope.store import labels as L
from scope.store.bulk_labels import AutoLabels, token_strings

_SPLIT = re.compile(r"(?u)\b\w\w+\b").findall  # bm25s.tokenize's default pattern
K1, B = 1.5, 0.75  # bm25s.BM25's defaults


def words(text: str) -> list[str]:
    """`text`'s words as `bm25s.tokenize` splits them: lowercased, two word characters or more."""
    return _SPLIT(text.lower())


class LabelIndex:
    """BM25 postings of `n_docs` documents: per word, the documents holding it and their score."""

    def __init__(self, doc: np.ndarray, word: np.ndarray, vocab: dict[str, int], n_docs: int):
        """`doc`, `word`: one entry per word occurrence (any order)."""
        self.vocab, self.n_docs = vocab, n_docs
        W = max(len(vocab), 1)
        key, tf = np.unique(doc.astype(np.int64) * W + word, return_counts=True)
        d, w = key // W, key % W
        dl = np.bincount(doc, minlength=n_docs)  # words per document, repeats counted
        avg = dl.mean() if n_docs else 1.0
        df = np.bincount(w, minlength=len(vocab))
        idf = np.array([math.log(1 + (n_docs - f + 0.5) / (f + 0.5)) for f in df.tolist()],
                       dtype=np.float32)
        # bm25s's arithmetic: the length term in float64, tf in float32, the score stored float32
        tf32 = tf.astype(np.float32)
        den = K1 * ((1 - B) + B * dl / avg)
        score = (idf[w] * (tf32 / (den[d] + tf32))).astype(np.float32)
        order = np.argsort(w, kind="stable")
        self._docs, self._scores = d[order], score[order]
        self._ptr = np.concatenate([[0], np.cumsum(df)])

    def scores(self, text: str) -> np.ndarray:
        """`[n_docs]` float64 relevance of each document to `text` (its known words, repeats
        counted, summed in float32 in the query's order as bm25s does)."""
        out = np.zeros(self.n_docs, dtype=np.float32)
        for w in words(text):
            i = self.vocab.get(w)
            if i is not None:
                lo, hi = self._ptr[i], self._ptr[i + 1]
                out[self._docs[lo:hi]] += self._scores[lo:hi]
        return out.astype(np.float64)

    @classmethod
    def of_labels(cls, auto: AutoLabels, explanations: Sequence[str | None]) -> LabelIndex:
        """The index of the texts `f"{explanation or ''} {auto label}"`, one per feature."""
        density, count, shares, vocab = auto.inputs()
        density, count = np.asarray(density), np.asarray(count)
        n, vocab_ids = len(count), {}

        def ids(text: str) -> list[int]:  # word ids, new words numbered as they come
            return [vocab_ids.setdefault(w, len(vocab_ids)) for w in words(text)]

        docs: list[np.ndarray] = []
        wids: list[np.ndarray] = []

        def add(rows: np.ndarray, text: str) -> None:  # the words of `text` in each of `rows`
            w = ids(text)
            if w and len(rows):
                docs.append(np.repeat(rows, len(w)))
                wids.append(np.tile(np.asarray(w, dtype=np.int64), len(rows)))

        for f, text in enumerate(explanations):
            if text:
                add(np.array([f]), text)
        dead = count <= 0
        add(np.flatnonzero(dead), L.DEAD_LABEL)
        T = min(L.LABEL_TOKENS, shares.ids.shape[1])
        used = ((np.arange(T) < shares.size[:, None]) & (shares.shares[:, :T] > 0)
                & ~dead[:, None])  # the label's tokens (auto_label: the first T, share > 0)
        add(np.flatnonzero(~dead & ~used.any(1)), L.NO_TOKENS_LABEL)
        rows = np.nonzero(used)[0]
        uniq, inv = np.unique(shares.ids[:, :T][used], return_inverse=True)
        per = [ids(L.show_token(s)) for s in token_strings(vocab, uniq)]  # each token once
        lens = np.array([len(p) for p in per], dtype=np.int64)
        flat = np.array([w for p in per for w in p], dtype=np.int64)
        rep = lens[inv]  # then every (feature, token) entry gets its token's words
        offs = np.arange(rep.sum()) - np.repeat(np.cumsum(rep) - rep, rep)
        docs.append(np.repeat(rows, rep))
        wids.append(flat[np.repeat((np.cumsum(lens) - lens)[inv], rep) + offs])
        pct = L.percent(shares.shares[:, :T][used])
        for v in np.unique(pct).tolist():  # "62%" -> "62"; "<1%" and "5%" have no word
            add(rows[pct == v], L.share_text(max(v, 0) / 100))
        top = np.where(shares.size > 0, shares.shares[:, 0], 0.0)
        for name, mask in L.live_flags(density, count, top).items():
            add(np.flatnonzero(mask & ~dead), name)
        doc = np.concatenate(docs) if docs else np.zeros(0, dtype=np.int64)
        word = np.concatenate(wids) if wids else np.zeros(0, dtype=np.int64)
        return cls(doc, word, vocab_ids, n)
