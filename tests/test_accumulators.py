"""accumulators.py: statistics equal a brute-force recomputation; batching, merge invariance."""

from __future__ import annotations

import numpy as np
import torch

from scope.accumulators import BAND_EDGES, HIST_EDGES, SUM_BITS, FeatureAccumulator, band_keys

D_SAE, CTX, N_WIN, K = 24, 10, 40, 5


def _stream(seed=0):
    g = torch.Generator().manual_seed(seed)
    f = torch.rand((N_WIN, CTX, D_SAE), generator=g) * 10 ** (torch.rand((N_WIN, CTX, D_SAE), generator=g) * 4 - 2)
    f = f * (torch.rand((N_WIN, CTX, D_SAE), generator=g) < 0.15)
    f[3, 4, 0] = f[7, 2, 0] = 5000.0  # exact tie in feature 0: lower window index wins
    mask = torch.ones((N_WIN, CTX), dtype=torch.bool)
    mask[:, 0] = False
    mask[5, 6] = False
    return f, mask


def _run(f, mask, order, batch):
    acc = FeatureAccumulator(D_SAE, CTX, top_k=K)
    for i in range(0, len(order), batch):
        w = torch.tensor(order[i : i + batch])
        acc.update(f[w].clone(), mask[w], w)
    return acc


def _arrays(acc):
    summary, per = acc.to_arrays()
    return {**{f"s.{k}": v for k, v in summary.items()}, **{f"p.{k}": v for k, v in per.items()}}


def test_matches_brute_force():
    f, mask = _stream()
    acc = _run(f, mask, list(range(N_WIN)), batch=7)
    fm = (f * mask[..., None]).numpy()
    flat = fm.reshape(-1, D_SAE)
    count = (flat != 0).sum(0)
    assert np.array_equal(acc.count.numpy(), count)
    assert acc.tokens == int(mask.sum())
    np.testing.assert_array_equal(acc.max.numpy(), flat.max(0))
    summary, per = acc.to_arrays()
    sums = np.where(flat != 0, flat.astype(np.float64), 0).sum(0)
    np.testing.assert_allclose(summary["mean_activation"], sums / np.maximum(count, 1), rtol=1e-5)
    np.testing.assert_allclose(summary["density"], count / mask.sum().item())
    assert abs(acc.act_sum.numpy() / 2**SUM_BITS - sums).max() < 1e-3
    for j in range(D_SAE):
        nz = flat[:, j][flat[:, j] != 0]
        hist, _ = np.histogram(np.clip(nz, HIST_EDGES[0], HIST_EDGES[-1] * 0.999), HIST_EDGES)
        assert np.array_equal(per["histogram"][j], hist), j
        ctx_max = fm[:, :, j].max(1)
        order = sorted((w for w in range(N_WIN) if ctx_max[w] > 0), key=lambda w: (-ctx_max[w], w))
        top = order[:K]
        assert per["top_window"][j][: len(top)].tolist() == top
        for slot, w in enumerate(top):
            assert per["top_value"][j, slot] == ctx_max[w]
            assert per["top_pos"][j, slot] == fm[w, :, j].argmax()
            assert np.array_equal(per["top_acts"][j, slot], fm[w, :, j].astype(np.float16))
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
    summary, per = acc.to_arrays()
    back = FeatureAccumulator.from_arrays(summary, per, ctx=CTX)
    for w in range(20, N_WIN, 6):
        idx = torch.arange(w, min(w + 6, N_WIN))
        back.update(f[idx].clone(), mask[idx], idx)
        acc.update(f[idx].clone(), mask[idx], idx)
    x, y = _arrays(acc), _arrays(back)
    for k in x:
        assert np.array_equal(x[k], y[k]), k
