"""Automatic labels of every feature at once: the numpy twin of `labels.token_shares`.

`top_shares` computes, for all `[d_sae, k]` summary rows, the same `(token, share)` lists that
`labels.token_shares` computes one feature at a time (the feature list at 1,048,576 features
cannot afford a Python loop per feature): in blocks of 32,768 rows, each worked on by columns
(k is small, so a sorting network over whole columns beats a sort call per row).
`sketch_rows` is the same for `labels.sketch_estimates`. `AutoLabels` turns the lists into
`labels.auto_label` strings lazily, one per row asked for, so a page of 50 rows costs 50 labels,
not a million. Tests compare all three against the per-feature functions element for element.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from scope.store import labels as L
from scope.store.schema import token_sketch_buckets


class TokenShares(NamedTuple):
    """Each feature's label tokens, best first: `ids [F, n]` int64 (-1 past the last) and
    `shares [F, n]` float64 (0 past the last); `size [F]` how many there are."""

    ids: np.ndarray
    shares: np.ndarray
    size: np.ndarray


def top_shares(tokens, values, counts, est=None, n: int = L.LABEL_TOKENS) -> TokenShares:
    """`labels.token_shares` of every row at once.

    Args:
        tokens, values: the summary's `top_token` / `top_value`, `[F, k]`.
        counts: `[F]` firing counts.
        est: `[F, k]` count-min estimates of each row's firings on its `tokens` (format 2), or
            a function of a row slice returning those rows' estimates (called block by block,
            so the `[F, k]` array is never held), or None (shares among the top contexts).
        n: tokens kept per feature.

    Returns:
        `TokenShares`; row i equals `token_shares(tokens[i], values[i], counts[i], vocab,
        est[i], n)` with ids in place of strings (bit for bit the same shares).
    """
    tokens, values = np.asarray(tokens), np.asarray(values)
    counts = np.asarray(counts, dtype=np.float64)
    F, k = tokens.shape
    if F == 0 or k == 0 or n == 0:
        return TokenShares(np.full((F, n), -1), np.zeros((F, n)), np.zeros(F, dtype=np.int64))
    # [n, F] in memory, handed out as its [F, n] transpose: a block writes whole rows of it
    ids, shares = np.empty((n, F), dtype=np.int64), np.empty((n, F), dtype=np.float64)
    size = np.empty(F, dtype=np.int64)  # every element is written block by block
    pack = _packing(int(tokens.max()), k)
    for a in range(0, F, _ROWS):  # blocks of rows: temporaries stay small and in cache
        z = slice(a, min(a + _ROWS, F))
        e = None if est is None else est(z) if callable(est) else est[z]
        _top_rows(pack, tokens[z], values[z], counts[z],
                  None if e is None else np.ascontiguousarray(e, dtype=np.float64),
                  ids[:, z], shares[:, z], size[z])
    return TokenShares(ids.T, shares.T, size)


#: rows per block of `top_shares`
_ROWS = 1 << 15


class _Packing(NamedTuple):
    """One integer per summary entry: its token id (`none` for an invalid entry, after every
    real id) shifted left by `bits`, or'ed with its position in the row. Sorting a row of them
    orders it by id, then position (the keys are unique, so any sort is the stable one)."""

    none: int
    bits: int
    dtype: type


def _packing(max_token: int, k: int) -> _Packing:
    none, bits = max(max_token, -1) + 1, max(1, (k - 1).bit_length())
    return _Packing(none, bits, np.int32 if none < 2 ** (31 - bits) else np.int64)


def _top_rows(pack: _Packing, tokens, values, counts, est, out_ids, out_shares, out_size) -> None:
    """`top_shares` of one block of rows, written into the `out_*` views (`[n, rows]`,
    `[n, rows]`, `[rows]`). It works on the
    block's columns (`[k, rows]`, k is small): a sorting network and a tournament over whole
    columns cost a few array passes, where sorting each row costs a call per row."""
    (F, k), n = tokens.shape, out_ids.shape[0]
    tokens = np.ascontiguousarray(tokens.T)
    valid = np.ascontiguousarray((values > 0).T)
    valid &= tokens >= 0
    key = np.where(valid, tokens.astype(pack.dtype, copy=False), pack.dtype(pack.none))
    key <<= pack.bits
    key |= np.arange(k, dtype=pack.dtype)[:, None]
    _sort_columns(key)
    ids = key >> pack.bits
    # the first of equal ids in sorted order is its first valid occurrence in the row, the
    # index np.unique(return_index=True) gives token_shares
    first = ids < pack.none
    first[1:] &= ids[1:] != ids[:-1]
    if est is None:
        n_valid = np.count_nonzero(valid, axis=0)
        # run length of each id: the next run's start (or the row's valid end) minus its own
        pos = np.arange(k)[:, None]
        nxt = np.where(first, pos, n_valid)
        nxt = np.minimum.accumulate(nxt[::-1], axis=0)[::-1]
        nxt = np.concatenate([nxt[1:], n_valid[None]], axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            share = (nxt - pos) / n_valid
    else:
        where = (key & ((1 << pack.bits) - 1)).astype(np.intp)
        where += np.arange(0, F * k, k, dtype=np.intp)
        share = est.reshape(-1)[where]
        share /= np.maximum(counts, 1.0)
        np.minimum(share, 1.0, out=share)
    never = np.logical_not(first, out=first)
    never |= np.isnan(share)  # a NaN share sorts last in token_shares: never named either
    np.putmask(share, never, -np.inf)
    # best first: share descending, then id ascending. Ids ascend down the columns, so the
    # first column holding a row's largest share holds its smallest id among equals
    m = min(n, k)  # columns of the output past it stay padding
    top, top_ids = out_shares[:m], out_ids[:m]
    flat_share, flat_ids = share.reshape(-1), ids.reshape(-1)
    small = np.uint8 if k <= 256 else np.intp
    col, step = np.empty(F, dtype=small), np.empty(F, dtype=small)  # each row's winning column
    wins, rows = np.empty(F, dtype=bool), np.arange(F)
    for r in range(m):
        best = top[r]
        best[:] = share[0]
        col[:] = 0
        for j in range(1, k):
            # the last column that beats the best so far (strictly: among equal shares the
            # first column, the smaller id, stays) is the largest j * wins_j
            np.greater(share[j], best, out=wins)
            np.maximum(col, np.multiply(wins, small(j), out=step), out=col)
            np.maximum(best, share[j], out=best)
        at = col.astype(np.intp)
        at *= F
        at += rows  # flat index of each row's winner
        top_ids[r] = flat_ids[at]
        flat_share[at] = -np.inf
    keep = top > 0  # once a round finds no positive share, no later round does
    out_size[:] = np.count_nonzero(keep, axis=0)
    np.logical_not(keep, out=keep)
    np.putmask(top, keep, 0.0)
    np.putmask(top_ids, keep, -1)
    out_shares[m:], out_ids[m:] = 0.0, -1  # n > k: padding


def _sort_columns(key: np.ndarray) -> None:
    """Sort every column of `key` (`[k, rows]`) ascending, in place: an odd-even transposition
    network (k rounds of compare-exchanges between neighbouring rows sort k values)."""
    k = len(key)
    for r in range(k):
        lo, hi = key[r % 2:k - 1:2], key[r % 2 + 1:k:2]
        small = np.minimum(lo, hi)
        np.maximum(lo, hi, out=hi)
        lo[...] = small


def sketch_rows(sketch: np.ndarray, tokens: np.ndarray, start: int) -> np.ndarray:
    """`labels.sketch_estimates(sketch, tokens, features)` of a range file's rows at once:
    `sketch [m, depth, width]` and `tokens [m, k]` of features `start .. start + m - 1`, as
    float64 `[m, k]` (the buckets are `schema.token_sketch_buckets`', read as flat indices)."""
    m, depth, width = sketch.shape
    tok = np.maximum(tokens, 0).astype(np.int64)
    feats = np.arange(start, start + m, dtype=np.int64)[:, None]
    flat = sketch.reshape(-1)
    base = np.arange(0, m * depth * width, depth * width, dtype=np.intp)[:, None]
    est = None
    for r in range(depth):
        got = flat[base + r * width + token_sketch_buckets(tok, feats, r, width)]
        est = got if est is None else np.minimum(est, got, out=est)
    return est.astype(np.float64)


def token_strings(vocab: Sequence[str], ids: np.ndarray) -> list[str]:
    """Display strings of token ids, as `labels.token_shares` names them (`<id>` past the
    vocabulary)."""
    return [vocab[t] if t < len(vocab) else f"<{t}>" for t in np.asarray(ids).tolist()]


def word_tokens(vocab: Sequence[str]) -> np.ndarray:
    """`[len(vocab)]` bool: the token has two letters or more (a word, for the home feature)."""
    return np.fromiter((sum(c.isalpha() for c in t) >= 2 for t in vocab), dtype=bool,
                       count=len(vocab))


class AutoLabels(Sequence):
    """`labels.auto_label` of every feature, computed when a row is read (and kept once the
    whole column has been read, e.g. for the text index)."""

    def __init__(self, density, count, shares: TokenShares, vocab: Sequence[str]) -> None:
        self._density, self._count = density, count
        self._shares, self._vocab = shares, vocab
        self._all: list[str] | None = None

    def __len__(self) -> int:
        return len(self._density)

    def fires_on(self, i: int) -> list[tuple[str, float]]:
        """Row i's `(token, share)` list, as `labels.token_shares` returns it."""
        m = int(self._shares.size[i])
        ids = self._shares.ids[i, :m].tolist()
        return list(zip(token_strings(self._vocab, ids), self._shares.shares[i, :m].tolist(),
                        strict=True))

    def _one(self, i: int) -> str:
        return L.auto_label(float(self._density[i]), int(self._count[i]), self.fires_on(i))

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = _row(i, len(self))
        return self._all[i] if self._all is not None else self._one(i)

    def __iter__(self):
        if self._all is None:
            self._all = [self._one(i) for i in range(len(self))]
        return iter(self._all)


def _row(i, n: int) -> int:
    """Index `i` of a column of `n` features as a row number (negative counts from the end)."""
    i = int(i)
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError(f"feature {i} out of range (d_sae={n})")
    return i


class LabelColumn(Sequence):
    """Each feature's label: its explanation's text where one is stored, else `auto`'s label.
    With `texts_only`, the explanation text or None (the table's `explanations`)."""

    def __init__(self, texts: dict[int, str], auto: AutoLabels, texts_only: bool = False):
        self._texts, self._auto, self._only = texts, auto, texts_only

    def __len__(self) -> int:
        return len(self._auto)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = _row(i, len(self))
        text = self._texts.get(i)
        return text if text is not None or self._only else self._auto[i]

    def __iter__(self):
        if self._only:
            return (self._texts.get(i) for i in range(len(self)))
        return (self._texts.get(i, a) for i, a in enumerate(self._auto))
