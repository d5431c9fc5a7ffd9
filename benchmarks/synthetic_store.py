"""A synthetic feature store at any width, written with the real writer (`bench_scale.py
--store` times the feature list and page on one of 1,048,576 features): random statistics of a
plausible shape (5% dead features, densities 1e-6..1e-1 over 10M tokens), ctx 16, top-5, one
sample per band, a 1 x 8 token sketch and 10 histogram bins.
"""

from __future__ import annotations

from pathlib import Path


def write_synthetic_store(root: Path, n: int, ctx: int = 16, k: int = 5, seed: int = 0
                          ) -> Path:
    """A complete format-2 store of `n` features with random statistics (the real writer)."""
    import numpy as np
    from builders import tiny_tokenizer

    from scope.pipeline.accumulators import BAND_EDGES, FeatureStats
    from scope.pipeline.corpus import token_strings
    from scope.store import schema as S
    from scope.store.writer import write_generation, write_manifest, write_tables, write_vocab

    rng = np.random.default_rng(seed)
    n_bands, s, n_windows, vocab = len(BAND_EDGES) - 1, 1, 4096, 360
    edges = np.logspace(-3, 6, 11)
    tokens = 10_000_000
    density = np.where(rng.random(n) < 0.05, 0.0, 10 ** rng.uniform(-6, -1, n))
    count = np.round(density * tokens).astype(np.int64)
    fired = count > 0
    top_value = np.sort(rng.uniform(0.1, 50, (n, k)).astype(np.float32), axis=1)[:, ::-1]
    top_value = np.where(fired[:, None], top_value, 0).astype(np.float32)
    top_window = np.where(fired[:, None], rng.integers(0, n_windows, (n, k)), -1)
    band_window = np.where(fired[:, None, None], rng.integers(0, n_windows, (n, n_bands, s)), -1)
    hist = rng.multinomial(1, np.ones(10) / 10, n).astype(np.int64) * count[:, None]
    st = FeatureStats(
        tokens=tokens, firing_count=count,
        act_sum_fixed=(count * top_value[:, 0] * 0.3 * 2**20).astype(np.int64),
        max_activation=top_value[:, 0].copy(), histogram=hist, top_window=top_window,
        top_value=top_value, top_pos=rng.integers(1, ctx, (n, k)).astype(np.int32),
        top_acts=rng.random((n, k, ctx)).astype(np.float16), band_window=band_window,
        band_value=rng.uniform(0.01, 50, (n, n_bands, s)).astype(np.float32),
        band_pos=rng.integers(1, ctx, (n, n_bands, s)).astype(np.int32),
        band_acts=rng.random((n, n_bands, s, ctx)).astype(np.float16),
        token_sketch=rng.integers(0, 50, (n, 1, 8)))
    win_index = np.arange(n_windows, dtype=np.int64)
    win_tokens = rng.integers(5, vocab, (n_windows, ctx)).astype(np.int32)
    win_tokens[:, 0] = 2
    entry = S.SAEEntry(name="synthetic-1m", dir="00-synthetic-1m",
                       hook_name="blocks.12.hook_resid_post", d_in=2304, d_sae=n)
    manifest = S.Manifest(
        saes=[entry], config={"synthetic": True}, model={"name": "synthetic", "spec": None},
        corpus={"source": "synthetic"}, ctx=ctx, top_k=k, band_samples=s,
        histogram_edges=edges.tolist(), band_edges=BAND_EDGES.tolist(), feature_shard_size=4096,
        token_sketch={"depth": 1, "width": 8}, tokens=tokens, windows=n_windows)
    root.mkdir(parents=True, exist_ok=True)
    write_vocab(root, token_strings(tiny_tokenizer(), vocab))
    tables = {S.LOGIT_POS_IDS: rng.integers(5, vocab, (n, 10)).astype(np.int32),
              S.LOGIT_POS_VALS: rng.random((n, 10)).astype(np.float32),
              S.LOGIT_NEG_IDS: rng.integers(5, vocab, (n, 10)).astype(np.int32),
              S.LOGIT_NEG_VALS: -rng.random((n, 10)).astype(np.float32),
              S.NEIGHBOUR_INDEX: rng.integers(0, n, (n, 10)).astype(np.int32),
              S.NEIGHBOUR_COSINE: rng.random((n, 10)).astype(np.float32)}
    write_tables(root, manifest, {entry.dir: tables})
    manifest.status = S.STATUS_COMPLETE
    write_generation(root, manifest, {entry.dir: st}, win_index, win_tokens)
    write_manifest(root, manifest)
    return root
