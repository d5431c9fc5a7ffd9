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


# -- wide SAEs: the same statistics kept in feature blocks, with memory flat in the width --------


def _same(a, b) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_blocked_state_equals_the_unblocked_one_bit_for_bit():
    """Blocks of 5 or 7 features (offsets inside the band hash and the token sketch) give the
    very arrays of one accumulator over all 24; a snapshot resumes in other blocks and merges."""
    from scope.pipeline.feature_blocks import BlockedAccumulator

    f, mask = _stream()
    whole = _arrays(_run(f, mask, list(range(N_WIN)), batch=7))
    for block in (5, 7, 24):
        acc = BlockedAccumulator(D_SAE, CTX, top_k=K, block=block)
        for i in range(0, N_WIN, 7):
            w = torch.arange(i, min(i + 7, N_WIN))
            acc.update(lambda a, b, w=w: f[w][..., a:b].clone(), mask[w], w, TOKENS[w])
        _same(_arrays(acc), whole)
        first, second = (BlockedAccumulator(D_SAE, CTX, top_k=K, block=block) for _ in range(2))
        for part, ws in ((first, torch.arange(0, 20)), (second, torch.arange(20, N_WIN))):
            part.update(f[ws].clone(), mask[ws], ws, TOKENS[ws])
        resumed = BlockedAccumulator.from_stats(first.stats(), CTX, block=block)
        resumed.merge(second)
        _same(_arrays(resumed), whole)


_PEAK_CHILD = r"""
import json, sys, torch
torch.set_num_threads(1)
from scope.pipeline.feature_blocks import BlockedAccumulator
d_sae, block, batch, ctx, d_in = (int(a) for a in sys.argv[1:6])
g = torch.Generator().manual_seed(0)
W = torch.randn(d_in, d_sae, generator=g)  # a wide SAE with a small d_in
edges = [1e-3, 1.0, 1e3]  # 2 bins, 2 bands, a 1 x 8 sketch: a small state per feature
acc = BlockedAccumulator(d_sae, ctx, top_k=2, band_samples=1, block=block,
                         hist_edges=edges, band_edges=edges, sketch=(1, 8))
def rss(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
open("/proc/self/clear_refs", "w").write("5")  # peak RSS := current RSS
base = rss("VmRSS:")
for step in range(3):
    x = torch.randn(batch, ctx, d_in, generator=g)
    def encode(a, b):
        pre = x @ W[:, a:b]
        return pre * (pre > 6.0)  # about 2% of the features fire, as in a real SAE
    acc.update(encode, torch.ones(batch, ctx, dtype=torch.bool), torch.arange(batch) + step * batch,
               torch.zeros(batch, ctx, dtype=torch.long))
print(json.dumps({"extra": rss("VmHWM:") - base}))
"""


def _peak_extra(d_sae: int, block: int, batch: int = 8, ctx: int = 64, d_in: int = 8) -> int:
    """Peak RSS a few batches add above the state, in a fresh process (bytes)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                           os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", _PEAK_CHILD, str(d_sae), str(block), str(batch),
                          str(ctx), str(d_in)], capture_output=True, text=True, env=env,
                         timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["extra"]


def test_batch_memory_is_flat_in_the_number_of_feature_blocks():
    """Growing a synthetic wide SAE from 2 to 8 blocks of 16,384 features leaves the memory a
    batch adds (above the state) flat; one block over all 8 x 16,384 features needs several
    times more (the measurement can tell them apart). Bound stated in feature_blocks."""
    import os

    from scope.pipeline.feature_blocks import batch_bytes

    if not os.path.exists("/proc/self/clear_refs"):
        import pytest

        pytest.skip("needs Linux /proc to measure peak memory")
    block = 16384
    small, wide, unblocked = (_peak_extra(2 * block, block), _peak_extra(8 * block, block),
                              _peak_extra(8 * block, 8 * block))
    assert wide < 1.5 * small + (8 << 20), (small, wide)
    assert wide <= batch_bytes(8, 64, block, density=0.02) + (16 << 20), wide
    assert unblocked > 2.5 * wide, (wide, unblocked)


def test_stated_state_size_is_the_tensors_it_allocates():
    from scope.pipeline.feature_blocks import BlockedAccumulator, state_bytes

    acc = BlockedAccumulator(50, CTX, top_k=K, block=16)
    held = 0
    for b in acc.blocks:
        held += sum(t.nbytes for t in (b.count, b.act_sum, b.max, b.hist, b.sketch, b._feat))
        held += sum(t.nbytes for s in (b.top, *b.bands)
                    for t in (s.key, s.window, s.value, s.pos, s.acts))
    assert held == state_bytes(50, CTX, top_k=K)
    assert state_bytes(1 << 20, 128) == 23_500 * (1 << 20)  # the figure docs/store.md states
