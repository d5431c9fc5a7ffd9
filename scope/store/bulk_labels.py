"""Automatic labels of every feature at once: the numpy twin of `labels.token_shares`.

`top_shares` computes, for all `[d_sae, k]` summary rows, the same `(token, share)` lists that
`labels.token_shares` computes one feature at a time (the feature list at 1,048,576 features
cannot afford a Python loop per feature): in blocks of 32,768 rows, each worked on by columns
(k is small, so a sorting network over whole columns beats a sort call per row). `LazyShares`
owns the same computation done block by block on demand (a page of 50 rows computes the
blocks those rows fall in, not a million rows). `sketch_rows` is the same for
`labels.sketch_estimates`. `AutoLabels` turns the lists into `labels.auto_label` strings
lazily, one per row asked for. Tests compare all of them against the per-feature functions
element for element.
"""

from __future__ import annotations

import threading
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

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Row i's ids and shares, `size[i]` of each."""
        m = int(self.size[i])
        return self.ids[i, :m], self.shares[i, :m]


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
    return LazyShares(tokens, values, counts, est, n).all()


#: rows per block of `top_shares`, and the most rows `LazyShares` computes in one call
_ROWS = 1 << 15


class LazyShares:
    """`top_shares` of every row, computed block by block (`block` rows each) the first time
    a row of the block is asked for, and kept.

    Rows are independent of each other and every block packs its keys as the whole array
    would (`_packing` of the global largest id), so whichever blocks are computed, in whatever
    order, each row holds what `top_shares` gives it, bit for bit. Runs of consecutive blocks
    still to do are computed together, up to `_ROWS` rows a call, so `all()` on a fresh
    instance costs what one `top_shares` call costs. `est` is `top_shares`' (a callable is
    asked only for the rows of the blocks computed).
    """

    def __init__(self, tokens, values, counts, est=None, n: int = L.LABEL_TOKENS,
                 block: int | None = None) -> None:
        self._tokens, self._values = np.asarray(tokens), np.asarray(values)
        self._counts = np.asarray(counts, dtype=np.float64)
        self._est, self._pack = est, None
        # one table serves every dashboard session (threads): blocks are computed under a lock,
        # so no reader sees a block another thread is still writing
        self._lock = threading.Lock()
        F, k = self._tokens.shape
        self.block = max(1, int(block or _ROWS))
        self._done = np.zeros(-(-F // self.block), dtype=bool)
        # [n, F] in memory, handed out as its [F, n] transpose: a block writes whole rows of it
        if F == 0 or k == 0 or n == 0:
            self._ids, self._shares = np.full((n, F), -1, dtype=np.int64), np.zeros((n, F))
            self._size = np.zeros(F, dtype=np.int64)
            self._done[:] = True
        else:  # every element is written when its block is computed
            self._ids, self._shares = np.empty((n, F), np.int64), np.empty((n, F), np.float64)
            self._size = np.empty(F, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._size)

    @property
    def blocks_done(self) -> int:
        """How many blocks have been computed (of `ceil(len / block)`)."""
        return int(np.count_nonzero(self._done))

    def need(self, rows) -> None:
        """Compute the blocks that the row numbers `rows` fall in, those not done yet."""
        want = np.zeros(len(self._done), dtype=bool)  # not np.unique: it imports numpy.ma
        want[np.asarray(rows, dtype=np.int64).reshape(-1) // self.block] = True
        with self._lock:
            want &= ~self._done
            self._compute(np.flatnonzero(want))

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Row i's ids and shares (as `TokenShares.row`), computing its block if needed."""
        if not self._done[i // self.block]:
            with self._lock:
                if not self._done[i // self.block]:
                    self._compute(np.array([i // self.block]))
        m = int(self._size[i])
        return self._ids[:m, i], self._shares[:m, i]

    def all(self) -> TokenShares:
        """Every row (the blocks not done yet are computed now)."""
        with self._lock:
            self._compute(np.flatnonzero(~self._done))
        return TokenShares(self._ids.T, self._shares.T, self._size)

    def _compute(self, blocks: np.ndarray) -> None:
        """Compute `blocks` (ascending block numbers, none done; the lock held), up to `_ROWS`
        rows a call:
        consecutive blocks in place, scattered ones (a sorted page's) gathered into one call
        and written back."""
        if blocks.size == 0:
            return
        (F, k), B, n = self._tokens.shape, self.block, len(self._ids)
        if self._pack is None:
            self._pack = _packing(int(self._tokens.max()), k)
        per = max(1, _ROWS // B)  # blocks per call
        for c in range(0, len(blocks), per):
            part = blocks[c:c + per].tolist()
            zs = [slice(b * B, min(b * B + B, F)) for b in part]
            if part[-1] - part[0] == len(part) - 1:  # one run: its rows as views
                z = slice(zs[0].start, zs[-1].stop)
                self._rows(z, self._est_of([z]), self._ids[:, z], self._shares[:, z],
                           self._size[z])
            else:
                at = np.concatenate([np.arange(z.start, z.stop) for z in zs])
                ids, shares = np.empty((n, len(at)), np.int64), np.empty((n, len(at)))
                size = np.empty(len(at), dtype=np.int64)
                self._rows(at, self._est_of(zs), ids, shares, size)
                self._ids[:, at], self._shares[:, at], self._size[at] = ids, shares, size
            self._done[part] = True

    def _est_of(self, zs: list[slice]) -> np.ndarray | None:
        """The sketch estimates of the rows of `zs`, float64, one after another."""
        e = self._est
        if e is None:
            return None
        parts = [e(z) if callable(e) else e[z] for z in zs]
        return np.ascontiguousarray(parts[0] if len(parts) == 1 else np.concatenate(parts),
                                    dtype=np.float64)

    def _rows(self, at, est, out_ids, out_shares, out_size) -> None:
        """`_top_rows` of the rows `at` (a slice or row numbers) into the `out_*` arrays."""
        _top_rows(self._pack, self._tokens[at], self._values[at], self._counts[at], est,
                  out_ids, out_shares, out_size)


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
    whole column has been read, e.g. for the text index). With `LazyShares`, reading a row
    computes only its block's shares; iterating computes them all."""

    def __init__(self, density, count, shares: TokenShares | LazyShares,
                 vocab: Sequence[str]) -> None:
        self._density, self._count = density, count
        self._shares, self._vocab = shares, vocab
        self._all: list[str] | None = None

    def __len__(self) -> int:
        return len(self._density)

    def fires_on(self, i: int) -> list[tuple[str, float]]:
        """Row i's `(token, share)` list, as `labels.token_shares` returns it."""
        ids, shares = self._shares.row(_row(i, len(self)))
        return list(zip(token_strings(self._vocab, ids), shares.tolist(), strict=True))

    def _one(self, i: int) -> str:
        return L.auto_label(float(self._density[i]), int(self._count[i]), self.fires_on(i))

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = _row(i, len(self))
        return self._all[i] if self._all is not None else self._one(i)

    def inputs(self) -> tuple[np.ndarray, np.ndarray, TokenShares, Sequence[str]]:
        """What every label is made of: densities, firing counts, every row's token shares
        (computed now where lazy) and the vocabulary (for the text index)."""
        shares = self._shares.all() if isinstance(self._shares, LazyShares) else self._shares
        return self._density, self._count, shares, self._vocab

    def __iter__(self):
        if self._all is None:
            if isinstance(self._shares, LazyShares):
                self._shares.all()  # in runs of `_ROWS` rows, not block by block
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
