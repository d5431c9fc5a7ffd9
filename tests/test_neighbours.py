"""Decoder neighbours: the approximate CPU mode against brute force, and the exact mode's rules.

Brute force is a float64 numpy cosine matrix rounded like the store (tests/test_store.py's
`brute_neighbours`). The approximate mode must equal it when it searches every cell over full
rows, and find at least `RECALL_BOUND` of it on a decoder with feature families (SAE decoders
split features into families of similar directions; a Gaussian decoder with no structure has
neighbours at the noise level, which no candidate search finds; its figure is printed by
benchmarks/bench_neighbours.py, not bounded here).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_store import brute_neighbours

from scope.pipeline import decoder_tables as DT
from scope.pipeline import neighbours as N
from scope.store import schema as S

#: recall@10 the approximate mode must reach on `planted` (measured 0.99 at 4,096 x 256 with a
#: 128-direction projection; 0.986 at 65,536 x 2304 and 0.965 at 1,048,576 x 2304 on full
#: rows, bench_neighbours.py)
RECALL_BOUND = 0.9


def planted(F: int, d: int, family: int = 16, seed: int = 0, dtype=torch.float32,
            chunk: int = 1 << 16) -> torch.Tensor:
    """A decoder of feature families: member = s * centre + sqrt(1 - s^2) * noise, s in
    [0.5, 0.95], so members share cosines of ~0.25-0.9 and strangers ~N(0, 1/d). Made `chunk`
    rows at a time in `dtype`, so a 1,048,576 x 2304 bfloat16 one needs only its 4.8 GB."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.randn(F // family + 1, d, generator=g)
    centre /= centre.norm(dim=1, keepdim=True)
    s = torch.rand(F, 1, generator=g) * 0.45 + 0.5
    owner = torch.randperm(F, generator=g) // family
    out = torch.empty(F, d, dtype=dtype)
    for a in range(0, F, chunk):
        b = min(F, a + chunk)
        noise = torch.randn(b - a, d, generator=g)
        noise /= noise.norm(dim=1, keepdim=True)
        out[a:b] = s[a:b] * centre[owner[a:b]] + (1 - s[a:b] ** 2).sqrt() * noise
    return out


def _tied() -> torch.Tensor:
    W = torch.randn(300, 16, generator=torch.Generator().manual_seed(0))
    W[10:20] = W[5]  # eleven equal directions: ties beyond the 10th place
    W[50] = 0.0  # a dead feature: cosine 0 with everything
    return W


def test_every_cell_over_full_rows_is_the_exact_answer():
    W = _tied()
    got = N.approximate_neighbours(W, 10, dim=64, probe=10**6, candidates=32)
    idx, cos = brute_neighbours(W.numpy())
    assert np.array_equal(got[S.NEIGHBOUR_INDEX], idx)
    np.testing.assert_allclose(got[S.NEIGHBOUR_COSINE], cos, atol=2e-6)
    assert got[S.NEIGHBOUR_INDEX][50].tolist() == list(range(10))


@pytest.mark.parametrize(("dtype", "dim"), [(torch.float32, None), (torch.bfloat16, 128)])
def test_recall_on_a_decoder_with_families(dtype, dim):
    W = planted(4096, 256).to(dtype)
    got = N.approximate_neighbours(W, 10, dim=dim, probe=8)[S.NEIGHBOUR_INDEX]
    want, want_cos = brute_neighbours(W.float().numpy())
    found = np.array([len(set(a) & set(b)) / 10 for a, b in zip(got.tolist(), want.tolist(),
                                                                  strict=True)])
    assert found.mean() >= RECALL_BOUND, found.mean()
    assert (got >= 0).all() and (got != np.arange(len(got))[:, None]).all()  # never itself
    # the cosines stored are the exact ones of the neighbours found, best first
    Wn = W.float().numpy().astype(np.float64)
    Wn /= np.linalg.norm(Wn, axis=1, keepdims=True)
    cos = N.approximate_neighbours(W, 10, dim=dim, probe=8)[S.NEIGHBOUR_COSINE]
    exact = np.einsum("fd,fkd->fk", Wn, Wn[got])
    np.testing.assert_allclose(cos, exact, atol=2e-6)
    assert (np.diff(cos, axis=1) <= 0).all()
    # the sampled recall is the same count on its sample
    r = N.recall(W, got, sample=200)
    rows = torch.randperm(4096, generator=torch.Generator().manual_seed(0))[:200].sort().values
    assert r.recall == pytest.approx(found[rows.numpy()].mean())
    assert r.sample == 200 and 0 <= r.worst <= r.recall


def test_fewer_candidates_find_fewer_neighbours():
    """The knob does what it says (and the bound above is not met by any search at all)."""
    W = planted(2048, 128)
    want, _ = brute_neighbours(W.numpy())

    def rec(**kw):
        got = N.approximate_neighbours(W, 10, **kw)[S.NEIGHBOUR_INDEX]
        return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got.tolist(), want.tolist(),
                                                                   strict=True)])

    assert rec(dim=16, probe=1, candidates=10) < rec(dim=128, probe=8) - 0.1


def test_exact_rows_equal_brute_force_with_ties():
    W = _tied()
    rows = torch.tensor([0, 5, 12, 50, 299])
    idx, _ = brute_neighbours(W.numpy())
    assert np.array_equal(N.exact_rows(W, rows, 10), idx[rows.numpy()])


def test_exact_mode_reports_every_tile_and_stays_exact():
    W = _tied()
    seen = []
    got = DT.decoder_neighbours(W, block=64, device="cpu", progress=lambda d, t: seen.append((d, t)))
    idx, _ = brute_neighbours(W.numpy())
    assert np.array_equal(got[S.NEIGHBOUR_INDEX], idx)
    tiles = 5 * 6 // 2  # 300 rows in blocks of 64: 5 blocks, each pair once
    assert seen == [(i, tiles) for i in range(1, tiles + 1)]


def test_auto_mode_is_exact_when_small_or_on_a_gpu_and_approximate_at_1m_on_cpu():
    assert DT.neighbour_mode(torch.zeros(4096, 64)) == "exact"
    big = torch.empty((1 << 20, 2304), device="meta")
    assert DT.neighbour_mode(big) == "approximate"
    assert DT.neighbour_mode(big, "exact") == "exact"
    assert DT.exact_flop(1 << 20, 2304) == pytest.approx(2.5e15, rel=0.02)
    with pytest.raises(ValueError, match="neighbours='fast'"):
        DT.neighbour_mode(big, "fast")


@pytest.mark.parametrize("arg", ["k", "dim", "probe", "candidates", "cells"])
def test_bad_knobs_are_refused_by_name(arg):
    with pytest.raises(ValueError, match=f"{arg}=0 must be at least 1"):
        N.approximate_neighbours(torch.zeros(8, 4), **{"k": 3, arg: 0})


def test_the_manifest_records_the_mode_and_refuses_an_unknown_one(tmp_path, monkeypatch):
    import json

    from builders import TINY_TEXT, tiny_hooked_model
    from extract_helpers import synthetic_sae

    import scope
    from scope.errors import StoreCorruptError
    from scope.pipeline.corpus import Corpus

    model = tiny_hooked_model()
    sae = synthetic_sae(model.cfg.d_model, 40, "blocks.1.hook_resid_post", seed=1)
    run = dict(tokens=256, ctx=16, batch_size=4, progress=False)
    exact = scope.extract(model, [sae], Corpus(texts=list(TINY_TEXT)), tmp_path / "a", **run)
    monkeypatch.setattr(DT, "EXACT_CPU_FLOP", 0.0)  # as a 1M-feature decoder on a CPU
    approx = scope.extract(model, [sae], Corpus(texts=list(TINY_TEXT)), tmp_path / "b", **run)
    name = exact.sae_names[0]
    assert exact.sae_info(name)["neighbours"] == "exact"
    assert approx.sae_info(name)["neighbours"] == "approximate"
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    manifest["saes"][0]["neighbours"] = "guessed"
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreCorruptError, match="neighbours.*'guessed'"):
        scope.open_store(tmp_path / "b")
