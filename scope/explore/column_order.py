"""A stable argsort of a `[d_sae]` column, several times faster than numpy's at 1M features.

`np.argsort(kind="stable")` on a million float64 values is a timsort of indices (~300 ms on
this machine under load); `np.sort` of uint64 keys is a SIMD sort (~20 ms). `stable_argsort`
packs each value's order-preserving bits above its index into one uint64, so that the keys
are unique and a plain sort of them is the stable order; values whose leading bits collide
(they differ only in low mantissa bits) are put right afterwards by a small lexsort. The
result equals `np.argsort(values, kind="stable")` element for element (tests compare them).
"""

from __future__ import annotations

import numpy as np


def sort_keys(values: np.ndarray) -> np.ndarray:
    """Unsigned 64-bit keys whose order is the values' order (`[n]` float or int; NaN is not
    allowed; -0.0 and 0.0 get the same key, as they compare equal)."""
    v = np.asarray(values)
    if v.dtype.kind in "iub":
        return v.astype(np.int64).view(np.uint64) ^ np.uint64(1 << 63)
    v = v.astype(np.float64) + 0.0  # -0.0 + 0.0 is 0.0
    bits = v.view(np.uint64)
    neg = (bits >> np.uint64(63)).astype(bool)
    return np.where(neg, ~bits, bits | np.uint64(1 << 63))


def stable_argsort(values: np.ndarray) -> np.ndarray:
    """`np.argsort(values, kind="stable")` of a 1-d array without NaN, int64 indices.

    Args:
        values: `[n]` numbers (replace NaN first: their place is the caller's rule).
    """
    keys = sort_keys(values)
    n = keys.size
    if n < 2:
        return np.arange(n, dtype=np.int64)
    index_bits = max(1, (n - 1).bit_length())
    if index_bits > 40:  # too many rows to leave room for a useful prefix
        return np.argsort(values, kind="stable")
    lo = keys.min()
    rel = keys - lo
    spare = 64 - index_bits
    drop = max(0, int(rel.max()).bit_length() - spare)  # low value bits that do not fit
    prefix = rel >> np.uint64(drop)
    packed = (prefix << np.uint64(index_bits)) | np.arange(n, dtype=np.uint64)
    packed.sort()
    order = (packed & np.uint64((1 << index_bits) - 1)).astype(np.int64)
    if drop:
        order = _settle_collisions(order, keys, packed >> np.uint64(index_bits))
    return order


def _settle_collisions(order: np.ndarray, keys: np.ndarray, prefix: np.ndarray) -> np.ndarray:
    """Reorder (in place) runs of equal prefixes whose full keys differ, by (key, index)."""
    # neighbours with equal prefixes (ties, or collisions) whose keys differ: one gather of
    # the keys in order, where gathering at every tie costs two (most rows tie in a column
    # of counts)
    in_order = keys[order]
    clash = np.flatnonzero((prefix[1:] == prefix[:-1]) & (in_order[1:] != in_order[:-1]))
    if clash.size == 0:
        return order
    run_start = np.flatnonzero(np.concatenate([[True], prefix[1:] != prefix[:-1]]))
    lo = run_start[np.searchsorted(run_start, clash, side="right") - 1]
    hi = np.append(run_start, prefix.size)[np.searchsorted(run_start, clash, side="right")]
    for a, b in set(zip(lo.tolist(), hi.tolist(), strict=True)):
        seg = order[a:b]
        order[a:b] = seg[np.lexsort((seg, keys[seg]))]
    return order
