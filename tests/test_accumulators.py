"""accumulators.py: statistics equal a brute-force recomputation; batching, merge invariance."""

from __future__ import annotations

import numpy as np
import torch

from scope.pipeline.accumulators import (
    BAND_EDGES,
    HIST_EDGES,
    SUM_BITS,
    FeatureAccumulator,
    band_keys,
)

D_SAE, CTX, N_WIN, K = 24, 10, 40, 5
TOKENS = torch.randint(0, 50, (N_WIN, CTX), generator=torch.Generator().manual_seed(9))


def _stream(seed=0):
    g = torch.Generator().manual_seed(seed)
    # activations span 1e-2 .. 1e5, the range of Gemma Scope 1 to Gemma 3 residual SAEs
    f = 10 ** (torch.rand((N_WIN, CTX, D_SAE), generator=g, dtype=torch.float64) * 7 - 2)
    f = f.float()
    f = f * (torch.rand((N_WIN, CTX, D_SAE), generator=g) < 0.15)
    f[3, 4, 0] = f[7, 2, 0] = 2e5  # exact tie in feature 0: lower window index wins
    mask = torch.ones((N_WIN, CTX), dtype=torch.bool)
    mask[:, 0] = False
    mask[5, 6] = False
    return f, mask


def _run(f, mask, order, batch):
    acc = FeatureAccumulator(D_SAE, CTX, top_k=K)
    for i in range(0, len(order), batch):
        w = torch.tensor(order[i : i + batch])
        acc.update(f[w].clone(), mask[w], w, TOKENS[w])
    return acc


def _arrays(acc):
    import dataclasses

    st = acc.stats()
    return {f.name: getattr(st, f.name) for f in dataclasses.fields(st)}


def test_matches_brute_force():
    f, mask = _stream()
    acc = _run(f, mask, list(range(N_WIN)), batch=7)
    fm = (f * mask[..., None]).numpy()
    flat = fm.reshape(-1, D_SAE)
    count = (flat != 0).sum(0)
    assert np.array_equal(acc.count.numpy(), count)
    assert acc.tokens == int(mask.sum())
    np.testing.assert_array_equal(acc.max.numpy(), flat.max(0))
    st = acc.stats()
    per = {"histogram": st.histogram, "top_window": st.top_window, "top_value": st.top_value,
           "top_pos": st.top_pos, "top_acts": st.top_acts, "band_window": st.band_window}
    sums = np.where(flat != 0, flat.astype(np.float64), 0).sum(0)
    np.testing.assert_allclose(st.mean_activation, sums / np.maximum(count, 1), rtol=1e-5)
    np.testing.assert_allclose(st.density, count / mask.sum().item())
    assert abs(acc.act_sum.numpy() / 2**SUM_BITS - sums).max() < 1e-3
    for j in range(D_SAE):
        nz = flat[:, j][flat[:, j] != 0]
        assert HIST_EDGES[0] <= nz.min() and nz.max() < HIST_EDGES[-1]  # nothing clipped
        hist, _ = np.histogram(nz, HIST_EDGES)
        assert np.array_equal(per["histogram"][j], hist), j
        ctx_max = fm[:, :, j].max(1)
        order = sorted((w for w in range(N_WIN) if ctx_max[w] > 0), key=lambda w: (-ctx_max[w], w))
        top = order[:K]
        assert per["top_window"][j][: len(top)].tolist() == top
        for slot, w in enumerate(top):
            assert per["top_value"][j, slot] == ctx_max[w]
            assert per["top_pos"][j, slot] == fm[w, :, j].argmax()
            rel = (fm[w, :, j] / np.float32(ctx_max[w])).astype(np.float16)
            assert np.array_equal(per["top_acts"][j, slot], rel)
        band = np.searchsorted(BAND_EDGES[1:-1], ctx_max, side="right")
        keys = band_keys(torch.arange(N_WIN), torch.full((N_WIN,), j)).numpy()
        for b in range(len(BAND_EDGES) - 1):
            members = [w for w in range(N_WIN) if ctx_max[w] > 0 and band[w] == b]
            want = sorted(members, key=lambda w: -keys[w])[:2]
            got = [w for w in per["band_window"][j, b].tolist() if w >= 0]
            assert got == want, (j, b)
    assert per["top_window"][0][0] == 3  # the tie


def test_batching_order_and_merge_are_invariant():
    f, mask = _stream(1)
    ref = _arrays(_run(f, mask, list(range(N_WIN)), batch=8))
    other = _arrays(_run(f, mask, list(range(N_WIN))[::-1], batch=3))
    for k in ref:
        assert np.array_equal(ref[k], other[k]), k
    a = _run(f, mask, [w for w in range(N_WIN) if w % 3 == 0], batch=4)
    b = _run(f, mask, [w for w in range(N_WIN) if w % 3 != 0], batch=5)
    b.merge(a)
    merged = _arrays(b)
    for k in ref:
        assert np.array_equal(ref[k], merged[k]), k


def test_round_trip_through_arrays():
    f, mask = _stream(2)
    acc = _run(f, mask, list(range(20)), batch=6)
    back = FeatureAccumulator.from_stats(acc.stats(), ctx=CTX)
    for w in range(20, N_WIN, 6):
        idx = torch.arange(w, min(w + 6, N_WIN))
        back.update(f[idx].clone(), mask[idx], idx, TOKENS[idx])
        acc.update(f[idx].clone(), mask[idx], idx, TOKENS[idx])
    x, y = _arrays(acc), _arrays(back)
    for k in x:
        assert np.array_equal(x[k], y[k]), k


def test_token_sketch_counts_firing_tokens():
    """Every firing is counted once per sketch row in its token's bucket; estimates >= truth."""
    from scope.store.schema import token_sketch_buckets

    f, mask = _stream(3)
    acc = _run(f, mask, list(range(N_WIN)), batch=9)
    sk = acc.stats().token_sketch
    fm = (f * mask[..., None]).numpy()
    toks = TOKENS.numpy()
    for j in range(D_SAE):
        fired = toks[fm[:, :, j] != 0]
        depth, width = sk.shape[1:]
        for r in range(depth):
            want = np.bincount(token_sketch_buckets(fired.astype(np.int64), np.int64(j), r, width),
                               minlength=width)
            assert np.array_equal(sk[j, r], want), (j, r)
        for t in np.unique(fired):
            est = min(sk[j, r][token_sketch_buckets(np.int64(t), np.int64(j), r, sk.shape[2])]
                      for r in range(sk.shape[1]))
            assert est >= (fired == t).sum()


def test_non_finite_activation_is_refused_and_state_kept():
    import pytest

    from scope.errors import NonFiniteActivationError

    f, mask = _stream(4)
    acc = _run(f, mask, list(range(10)), batch=5)
    before = _arrays(acc)
    bad = f[10:15].clone()
    bad[2, 3, 7] = float("nan")
    with pytest.raises(NonFiniteActivationError, match="feature 7") as info:
        acc.update(bad, mask[10:15], torch.arange(10, 15), TOKENS[10:15])
    assert info.value.feature == 7
    after = _arrays(acc)
    assert all(np.array_equal(before[k], after[k]) for k in before)
