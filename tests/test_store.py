"""The feature store, format 2: wide-range statistics, neighbours, token shares, damage, locks.

Every figure is checked against a brute-force recomputation on a tiny model and a synthetic SAE
whose activations span 1e-2 .. 1e5 (the scales of Gemma Scope 1 up to Gemma 3 residual SAEs).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from builders import TINY_TEXT, tiny_hooked_model
from extract_helpers import brute_force, store_arrays, synthetic_sae

import scope
from scope.errors import (
    CorpusError,
    NonFiniteActivationError,
    StoreCorruptError,
    StoreError,
    StoreLockedError,
)
from scope.pipeline.decoder_tables import COSINE_GRID, decoder_neighbours
from scope.saes.sae import JumpReLUSAE
from scope.store import open_store
from scope.store import schema as S

CTX, BS, K = 16, 4, 5
TEXTS = [f"Text {i}: " + " ".join(TINY_TEXT) * (1 + i % 2) for i in range(10)]


def wide_sae(d_in: int, d_sae: int = 48) -> JumpReLUSAE:
    """A JumpReLU SAE whose features fire on scales from ~1e-2 to ~1e5 (encoder rows scaled)."""
    base = synthetic_sae(d_in, d_sae, "blocks.1.hook_resid_post", seed=5, threshold=0.5)
    scale = torch.logspace(-1.5, 4.3, d_sae)
    W_dec = base.W_dec.clone()
    W_dec[d_sae - 1] = W_dec[3]  # an exact duplicate direction: a cosine-1 tie
    return JumpReLUSAE(base.cfg, W_enc=base.W_enc * scale, W_dec=W_dec, b_enc=base.b_enc * scale,
                       b_dec=base.b_dec, threshold=base.threshold * scale)


@pytest.fixture(scope="module")
def model():
    return tiny_hooked_model()


@pytest.fixture(scope="module")
def sae(model):
    return wide_sae(model.cfg.d_model)


def _extract(model, saes, out, **kw):
    kw = {"ctx": CTX, "batch_size": BS, "top_k": K, "progress": False, **kw}
    return scope.extract(model, saes, TEXTS, out, **kw)


@pytest.fixture(scope="module")
def store(model, sae, tmp_path_factory):
    return _extract(model, [sae], tmp_path_factory.mktemp("wide") / "store")


def brute_neighbours(W_dec: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Cosine top-k by a full float64 matrix, rounded like the store, ties by lower index."""
    W = W_dec.astype(np.float64)
    Wn = W / np.maximum(np.linalg.norm(W, axis=1, keepdims=True), 1e-30)
    sims = np.round(Wn @ Wn.T * COSINE_GRID) / COSINE_GRID
    np.fill_diagonal(sims, -np.inf)
    idx = np.stack([np.lexsort((np.arange(len(r)), -r))[:k] for r in sims])
    return idx, np.take_along_axis(sims, idx, 1)


def test_format_2_statistics_cover_every_scale(model, sae, store):
    name = store.sae_names[0]
    toks, (f,) = brute_force(model, [sae], TEXTS, CTX, BS)
    flat = f.reshape(-1, f.shape[-1])
    nz_all = flat[flat != 0]
    assert nz_all.min() < 0.1 and nz_all.max() > 1e4  # the synthetic SAE spans the range
    assert store.format_version == 2 and not store.histograms_may_be_clipped
    edges, bands = store.histogram_edges, store.band_edges
    assert np.array_equal(edges, S.Manifest.from_dict(store.manifest, store.path).histogram_edges)
    for i in range(f.shape[-1]):
        feat = store.feature(name, i)
        nz = flat[:, i][flat[:, i] != 0]
        counts, e = feat.histogram
        assert np.array_equal(e, edges)
        if len(nz):
            assert edges[0] <= nz.min() and nz.max() < edges[-1]  # nothing outside the edges
        assert np.array_equal(counts, np.histogram(nz, edges)[0]), i
        ctx_max = f[:, :, i].max(1)
        order = sorted((w for w in range(len(f)) if ctx_max[w] > 0),
                       key=lambda w: (-ctx_max[w], w))[:K]
        assert [ex.window for ex in feat.top_examples] == order
        for ex in feat.top_examples:
            np.testing.assert_allclose(ex.activations, f[ex.window, :, i], rtol=1e-3,
                                       atol=1e-3 * ex.max_activation)
            assert ex.activations[ex.max_position] == ex.max_activation
        for band in feat.band_examples:
            b = int(np.searchsorted(bands, band.low))
            assert band.low == bands[b] and band.high == bands[b + 1]
            for ex in band.examples:
                assert band.low <= ex.max_activation < band.high
                assert ex.max_activation == ctx_max[ex.window]


def test_fires_on_estimates_token_shares(model, sae, store):
    name = store.sae_names[0]
    toks, (f,) = brute_force(model, [sae], TEXTS, CTX, BS)
    vocab = store.vocab
    checked = 0
    for i in range(f.shape[-1]):
        fired = toks[f[:, :, i] != 0]
        feat = store.feature(name, i)
        if len(fired) == 0:
            assert feat.fires_on == []
            continue
        true = {vocab[t]: n / len(fired) for t, n in zip(*np.unique(fired, return_counts=True),
                                                         strict=True)}
        got = feat.fires_on
        assert got and [s for _, s in got] == sorted((s for _, s in got), reverse=True)
        depth, width = store.manifest["token_sketch"]["depth"], store.manifest["token_sketch"]["width"]
        sketch = np.zeros((depth, width), np.int64)  # the count-min sketch, recomputed
        for r in range(depth):
            np.add.at(sketch[r], S.token_sketch_buckets(fired.astype(np.int64), np.int64(i), r,
                                                        width), 1)
        ids = {s: t for t, s in enumerate(vocab)}
        for tok, share in got:
            t = np.int64(ids[tok])
            est = min(sketch[r][S.token_sketch_buckets(t, np.int64(i), r, width)]
                      for r in range(depth))
            assert share == est / len(fired)
            assert share >= true.get(tok, 0) - 1e-12  # a count-min sketch never undercounts
        best = max(true.values())
        if sum(v == best for v in true.values()) == 1 and got[0][1] - best < 1e-12:
            assert true[got[0][0]] == best
            checked += 1
    assert checked > 5


def test_neighbours_equal_brute_force_with_ties(store, sae):
    name = store.sae_names[0]
    want_idx, want_cos = brute_neighbours(sae.W_dec.numpy())
    for i in range(sae.cfg.d_sae):
        got = store.feature(name, i).neighbours
        assert [j for j, _ in got] == want_idx[i].tolist(), i
        np.testing.assert_allclose([c for _, c in got], want_cos[i], atol=2e-6)
    assert store.feature(name, 3).neighbours[0] == (sae.cfg.d_sae - 1, 1.0)  # the duplicate


def test_neighbours_blockwise_equals_one_block_and_handles_ties():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(300, 16, generator=g)
    W[10:20] = W[5]  # eleven equal directions: ties beyond the 10th place
    W[50] = 0.0  # a dead feature: cosine 0 with everything
    small = decoder_neighbours(W, block=7)
    whole = decoder_neighbours(W, block=10_000)
    assert np.array_equal(small[S.NEIGHBOUR_INDEX], whole[S.NEIGHBOUR_INDEX])
    np.testing.assert_allclose(small[S.NEIGHBOUR_COSINE], whole[S.NEIGHBOUR_COSINE], atol=2e-6)
    idx, cos = brute_neighbours(W.numpy())
    assert np.array_equal(small[S.NEIGHBOUR_INDEX], idx)
    np.testing.assert_allclose(small[S.NEIGHBOUR_COSINE], cos, atol=2e-6)
    assert small[S.NEIGHBOUR_INDEX][5].tolist() == list(range(10, 20))
    assert small[S.NEIGHBOUR_INDEX][50].tolist() == list(range(10))


def test_tables_are_written_once_not_per_generation(store):
    assert (store.path / S.TABLES_DIR).is_dir()
    gen = store.path / store.manifest["data"]
    keys = set()
    for p in gen.rglob("features_*.safetensors"):
        from safetensors import safe_open

        with safe_open(str(p), "np") as h:
            keys |= set(h.keys())
    assert not keys & set(S.TABLE_KEYS)


def test_data_files_are_world_readable(store):
    mask = os.umask(0o022)
    os.umask(mask)
    for p in store.path.rglob("*"):
        want = (0o777 if p.is_dir() else 0o666) & ~mask
        assert p.stat().st_mode & 0o777 == want, p


def _v1_copy(store, dest):
    """The same store in format 1: logits inside the data files, absolute float16 activations,
    edges that stop at 1e3 (as scope 0.1 wrote it)."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(store.path, dest)
    m = json.loads((dest / "manifest.json").read_text())
    for entry in m["saes"]:
        tables = dest / "tables" / entry["dir"]
        for p in (dest / m["data"] / "saes" / entry["dir"]).glob("features_*"):
            a = load_file(str(p))
            for key, value in ((S.TOP_ACTS, S.TOP_VALUE), (S.BAND_ACTS, S.BAND_VALUE)):
                a[key] = np.clip(a[key].astype(np.float32) * a[value][..., None], 0, 65504).astype(np.float16)
            del a[S.TOKEN_SKETCH]
            t = load_file(str(tables / p.name))
            a.update({k: t[k] for k in S.LOGIT_KEYS})
            save_file(a, str(p))
    shutil.rmtree(dest / "tables")
    for k in ("tables", "token_sketch", "n_neighbours"):
        m.pop(k)
    m["format_version"] = 1
    (dest / "manifest.json").write_text(json.dumps(m))
    return dest


def test_format_1_store_opens_read_only_with_a_warning(model, sae, store, tmp_path):
    old = _v1_copy(store, tmp_path / "v1")
    with pytest.warns(UserWarning, match="histograms"):
        v1 = open_store(old)
    assert v1.format_version == 1 and v1.histograms_may_be_clipped
    name = v1.sae_names[0]
    for i in (0, 20, 40):
        a, b = v1.feature(name, i), store.feature(name, i)
        assert a.top_logits == b.top_logits and a.neighbours == [] and a.fires_on == []
        assert [e.window for e in a.top_examples] == [e.window for e in b.top_examples]
    with pytest.raises(StoreError, match="format 1"):
        _extract(model, [sae], old)


def _tree(path):
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(path.rglob("*"))}


@pytest.mark.parametrize("damage", ["truncated", "not_json", "version", "no_generation",
                                    "no_tables", "no_vocab"])
def test_damaged_store_gives_a_named_error_and_is_not_written(store, tmp_path, damage):
    bad = tmp_path / "bad"
    shutil.copytree(store.path, bad)
    m = json.loads((bad / "manifest.json").read_text())
    name = m["saes"][0]["name"]
    features = next((bad / m["data"] / "saes").rglob("features_*.safetensors"))
    if damage == "truncated":
        features.write_bytes(features.read_bytes()[:-100])
        fragment, cls = features.name, StoreCorruptError
    elif damage == "not_json":
        (bad / "manifest.json").write_text("{not json")
        fragment, cls = "manifest.json", StoreCorruptError
    elif damage == "version":
        (bad / "manifest.json").write_text(json.dumps({**m, "format_version": 99}))
        fragment, cls = "upgrade scope", StoreError
    elif damage == "no_generation":
        shutil.rmtree(bad / m["data"])
        fragment, cls = m["data"], StoreCorruptError
    elif damage == "no_tables":
        shutil.rmtree(bad / "tables")
        fragment, cls = "tables", StoreCorruptError
    else:
        (bad / "vocab.json").unlink()
        fragment, cls = "vocab.json", StoreCorruptError
    before = _tree(bad)
    with pytest.raises(cls, match=fragment):
        s = open_store(bad)
        f = s.feature(name, 0)
        f.histogram, f.top_examples, f.top_logits, f.neighbours, f.fires_on  # noqa: B018
    assert _tree(bad) == before


def test_failures_before_the_first_batch_leave_nothing(model, sae, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(CorpusError, match="no such file"):
        scope.extract(model, [sae], str(tmp_path / "typo.txt"), out, ctx=CTX, progress=False)
    with pytest.raises(CorpusError, match="--ctx 1"):
        scope.extract(model, [sae], TEXTS, out, ctx=1, progress=False)
    assert not out.exists()
    assert _extract(model, [sae], out).status == "complete"  # the corrected command runs


def test_nan_activation_names_the_sae_and_feature(model, sae, tmp_path):
    bad = JumpReLUSAE(sae.cfg, W_enc=sae.W_enc, W_dec=sae.W_dec, b_enc=sae.b_enc.clone(),
                      b_dec=sae.b_dec, threshold=sae.threshold)
    with torch.no_grad():
        bad.b_enc[7] = float("inf")  # inf passes the JumpReLU gate (a NaN would be gated off)
    with pytest.raises(NonFiniteActivationError, match=rf"{sae.cfg.name}.*feature 7"):
        _extract(model, [bad], tmp_path / "nan")


def test_second_run_on_the_same_out_is_refused_and_stale_lock_taken_over(model, sae, store,
                                                                         tmp_path):
    out = tmp_path / "locked"
    out.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        (out / S.LOCK).write_text(json.dumps({"pid": live.pid, "host": socket.gethostname()}))
        with pytest.raises(StoreLockedError, match=f"pid {live.pid}"):
            _extract(model, [sae], out)
        assert sorted(p.name for p in out.iterdir()) == [S.LOCK]
    finally:
        live.kill()
        live.wait()
    # the holder is dead now: its lock is stale and the next run takes it over
    done = _extract(model, [sae], out)
    assert done.status == "complete" and not (out / S.LOCK).exists()
    assert store_arrays(out) == store_arrays(store.path)


def test_disk_full_keeps_the_last_generation(model, sae, tmp_path):
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=700k", "tmpfs", str(mnt)],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"mount not permitted here: {r.stderr.decode().strip()}")
    try:
        from scope.errors import StoreFullError

        with pytest.raises(StoreFullError, match=r"needs about [\d.,]+ MiB"):
            _extract(model, [sae], mnt / "store", checkpoint_every=0.0)
        m = json.loads((mnt / "store" / "manifest.json").read_text())
        assert m["data"] is not None  # the first checkpoint fitted; it is complete and readable
        s = open_store(mnt / "store")
        s.feature(s.sae_names[0], 0).top_examples  # noqa: B018
        del s
        assert not list((mnt / "store").glob(".gen-*"))
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.slow
def test_feature_page_reads_in_budget_with_validation(tmp_path):
    """A synthetic 16,384-feature store (ctx 128, top_k 20): opening it and reading one whole
    feature page, every file checked as it is opened, stays far below the 300 ms budget."""
    import time

    from scope.pipeline.accumulators import BAND_EDGES, HIST_EDGES, FeatureStats
    from scope.store.writer import write_generation, write_manifest, write_tables, write_vocab

    F, k, P, W, rng = 16384, 20, 128, 2000, np.random.default_rng(0)
    entry = S.SAEEntry(name="sae", dir="00-sae", hook_name="blocks.1.hook_resid_post", d_in=64,
                       d_sae=F)
    m = S.Manifest(saes=[entry], config={}, model={"name": "m", "spec": "m"}, corpus={}, ctx=P,
                   top_k=k, band_samples=2, histogram_edges=HIST_EDGES.tolist(),
                   band_edges=BAND_EDGES.tolist(), feature_shard_size=4096,
                   token_sketch={"depth": 4, "width": 256})
    root = tmp_path / "wide"
    write_manifest(root, m)
    write_vocab(root, [f"t{i}" for i in range(1000)])
    ids = lambda: rng.integers(0, 1000, (F, 10)).astype(np.int32)  # noqa: E731
    vals = lambda *shape: rng.random(shape, np.float32)  # noqa: E731
    write_tables(root, m, {"00-sae": {
        S.LOGIT_POS_IDS: ids(), S.LOGIT_POS_VALS: vals(F, 10), S.LOGIT_NEG_IDS: ids(),
        S.LOGIT_NEG_VALS: vals(F, 10), S.NEIGHBOUR_INDEX: rng.integers(0, F, (F, 10)).astype(
            np.int32), S.NEIGHBOUR_COSINE: vals(F, 10)}})
    st = FeatureStats(
        tokens=10**6, firing_count=rng.integers(1, 1000, F), act_sum_fixed=rng.integers(1, 2**30, F),
        max_activation=vals(F) + 1, histogram=rng.integers(0, 5, (F, 90)),
        top_window=np.sort(rng.integers(0, W, (F, k)), 1), top_value=vals(F, k),
        top_pos=rng.integers(1, P, (F, k)).astype(np.int32),
        top_acts=vals(F, k, P).astype(np.float16), band_window=rng.integers(-1, W, (F, 16, 2)),
        band_value=vals(F, 16, 2), band_pos=rng.integers(1, P, (F, 16, 2)).astype(np.int32),
        band_acts=vals(F, 16, 2, P).astype(np.float16),
        token_sketch=rng.integers(0, 3, (F, 4, 256)))
    write_generation(root, m, {"00-sae": st}, np.arange(W),
                     rng.integers(0, 1000, (W, P)).astype(np.int32))
    del st
    times = []
    for i in rng.integers(0, F, 7).tolist():
        t = time.perf_counter()
        f = open_store(root).feature("sae", i)
        f.histogram, f.top_examples, f.band_examples, f.top_logits, f.neighbours  # noqa: B018
        f.fires_on, f.label, f.density  # noqa: B018
        times.append(time.perf_counter() - t)
    assert sorted(times)[3] < 0.3, times
