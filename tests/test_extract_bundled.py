"""Extraction on the bundled Gemma 3 270M with a small synthetic SAE (slow tier)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from extract_helpers import brute_force, synthetic_sae

import scope
from scope.pipeline.corpus import Corpus

pytestmark = pytest.mark.slow

HOOK, CTX, BS, TOKENS = "blocks.3.hook_resid_post", 32, 4, 32 * 12


@pytest.fixture(scope="module")
def model():
    return scope.load_model("bundled", device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def sae(model):
    sae = synthetic_sae(model.cfg.d_model, 96, HOOK, seed=5)
    windows = torch.stack([w for w in scope.pipeline.corpus.token_windows(None, model.tokenizer, CTX, 4 * CTX)])
    with torch.no_grad():
        x = scope.capture(model, windows, [HOOK])[HOOK][:, 1:].reshape(-1, model.cfg.d_model)
        sae.threshold.data = torch.quantile(sae.encode_pre(x), 0.97, dim=0)
    return sae


@pytest.fixture(scope="module")
def store(model, sae, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundled") / "store"
    return scope.extract(model, [sae], Corpus(), out, tokens=TOKENS, ctx=CTX, batch_size=BS,
                         top_k=5, progress=False)


def test_bundled_statistics_equal_brute_force(model, sae, store):
    toks, (f,) = brute_force(model, [sae], Corpus(), CTX, BS, TOKENS)
    name = store.sae_names[0]
    flat = f.reshape(-1, f.shape[-1])
    assert np.array_equal(store.firing_counts(name), (flat != 0).sum(0))
    assert np.array_equal(store.max_activations(name), flat.max(0))
    for i in range(0, f.shape[-1], 7):
        feat = store.feature(name, i)
        ctx_max = f[:, :, i].max(1)
        order = sorted((w for w in range(len(f)) if ctx_max[w] > 0), key=lambda w: (-ctx_max[w], w))
        assert [e.window for e in feat.top_examples] == order[:5]
        for e in feat.top_examples:
            assert e.tokens == [store.vocab[t] for t in toks[e.window]]
            # format 2 keeps each context relative to its peak, in float16 (3 digits at any scale)
            peak = np.float32(ctx_max[e.window])
            want = (f[e.window, :, i] / peak).astype(np.float16).astype(np.float32) * peak
            assert e.max_activation == peak
            assert np.array_equal(np.float32(e.activations), want)


def test_bundled_store_reads_like_text(store):
    name = store.sae_names[0]
    feat = store.feature(name, int(np.argmax(store.densities(name))))
    text = "".join(feat.top_examples[0].tokens)
    assert text.startswith("<bos>") and len(text) > CTX
    assert len(feat.top_logits) == 10 and feat.top_logits[0][1] > feat.bottom_logits[0][1]
    assert abs(feat.top_logits[0][1]) > 0.5  # ln_final gain folded in (REFERENCE.md §4)
    assert store.manifest["model"]["spec"] == "bundled"
