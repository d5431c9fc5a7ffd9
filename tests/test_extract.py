"""extract.py: statistics equal a brute-force recomputation; resume, shards, merge, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from builders import TINY_TEXT, tiny_hooked_model
from extract_helpers import brute_force, manifest_core, np_hist, store_arrays, synthetic_sae

import scope
from scope.errors import CorpusError, ShapeMismatchError, StoreError
from scope.pipeline.corpus import Corpus
from scope.pipeline.merge import merge_stores
from scope.store import open_store, read_manifest

CTX, BS, K = 16, 4, 5
TEXTS = [f"Document {i}: " + " ".join(TINY_TEXT) * (1 + i % 3) for i in range(12)]


@pytest.fixture(scope="module")
def model():
    return tiny_hooked_model()


@pytest.fixture(scope="module")
def saes(model):
    d = model.cfg.d_model
    return [synthetic_sae(d, 40, "blocks.1.hook_resid_post", seed=1),
            synthetic_sae(d, 24, "blocks.2.hook_resid_post", seed=2, threshold=0.6)]


def _extract(model, saes, out, **kw):
    kw = {"ctx": CTX, "batch_size": BS, "top_k": K, "progress": False, **kw}
    return scope.extract(model, saes, TEXTS, out, **kw)


@pytest.fixture(scope="module")
def reference(model, saes, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "store"
    return _extract(model, saes, out)


def test_statistics_and_top_contexts_equal_brute_force(model, saes, reference):
    store = reference
    toks, feats = brute_force(model, saes, TEXTS, CTX, BS)
    vocab = store.vocab
    n_counted = int(feats[0].shape[0] * (CTX - 1))
    assert store.manifest["status"] == "complete" and store.manifest["tokens"] == toks.size
    edges = store.manifest["histogram_edges"]
    for name, f in zip(store.sae_names, feats, strict=True):
        flat = f.reshape(-1, f.shape[-1])
        count = (flat != 0).sum(0)
        assert np.array_equal(store.firing_counts(name), count)
        np.testing.assert_allclose(store.densities(name), count / n_counted)
        assert np.array_equal(store.max_activations(name), flat.max(0))
        for i in range(f.shape[-1]):
            feat = store.feature(name, i)
            nz = flat[:, i][flat[:, i] != 0]
            assert feat.firing_count == len(nz)
            if len(nz):
                assert feat.mean_activation == pytest.approx(nz.astype(np.float64).mean(), rel=1e-5)
            assert np.array_equal(feat.histogram[0], np_hist(nz, np.asarray(edges)))
            ctx_max = f[:, :, i].max(1)
            order = sorted((w for w in range(len(f)) if ctx_max[w] > 0),
                           key=lambda w: (-ctx_max[w], w))[:K]
            assert [e.window for e in feat.top_examples] == order
            for e in feat.top_examples:
                assert e.max_activation == ctx_max[e.window]
                assert e.max_position == int(f[e.window, :, i].argmax()) != 0
                assert e.tokens == [vocab[t] for t in toks[e.window]]
                np.testing.assert_allclose(e.activations, f[e.window, :, i],
                                           rtol=1e-3, atol=1e-3 * e.max_activation)
            for band in feat.band_examples:
                assert band.examples and all(band.low <= e.max_activation < band.high or
                                             band.high == max(store.band_edges) for e in band.examples)


def test_logit_tables_follow_reference_formula(model, saes, reference):
    """Direct logit effect from the raw Hugging Face weights: W_dec * (1 + norm.weight) @ W_U
    (Gemma's RMSNorm multiplies by 1 + w), independent of how the hooked model stores its gain."""
    from builders import _cached_dir
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(_cached_dir("gemma3"), dtype=torch.float32)
    gain = 1.0 + hf.model.norm.weight.detach()
    W_U = hf.lm_head.weight.detach().T[:, : len(model.tokenizer)]
    sae = saes[0]
    direction = (sae.W_dec * gain) @ W_U
    for i in (0, 7):
        feat = reference.feature(reference.sae_names[0], i)
        want = direction[i].topk(10)
        assert [v for _, v in feat.top_logits] == pytest.approx(want.values.tolist(), rel=1e-4)
        assert [t for t, _ in feat.top_logits] == [reference.vocab[j] for j in want.indices]
        assert feat.bottom_logits[0][1] == pytest.approx(direction[i].min().item(), rel=1e-4)


def test_manifest_and_read_api(reference, saes):
    m = reference.manifest
    for key in ("format_version", "tool_version", "status", "model", "saes", "corpus", "tokens",
                "ctx", "top_k", "config"):
        assert key in m
    assert reference.sae_names == [s.cfg.name for s in saes]
    info = reference.sae_info(reference.sae_names[1])
    assert info["d_sae"] == 24 and info["hook_name"] == "blocks.2.hook_resid_post"
    assert reference.n_features(reference.sae_names[1]) == 24
    hits = reference.search_token(reference.sae_names[0], "e", k=3)
    assert len(hits) <= 3 and all(isinstance(i, int) for i, _ in hits)
    assert [v for _, v in hits] == sorted((v for _, v in hits), reverse=True)
    with pytest.raises(StoreError):
        reference.feature(reference.sae_names[0], 40)
    with pytest.raises(StoreError, match="Did you mean"):
        reference.sae_info("blocks.1.hook_resid_pos")


@pytest.mark.parametrize("stops", [[1], [0, 2], [3, 4, 5]])
def test_resume_after_interrupts_is_bit_identical(model, saes, reference, tmp_path, stops,
                                                  monkeypatch):
    out = tmp_path / "store"
    encode = type(saes[1]).encode
    for stop in stops:
        calls = {"n": 0}

        def flaky(self, x, stop=stop, calls=calls):  # Ctrl-C in the middle of batch `stop`
            if self is saes[1]:
                if calls["n"] == stop:
                    raise KeyboardInterrupt
                calls["n"] += 1
            return encode(self, x)

        monkeypatch.setattr(type(saes[1]), "encode", flaky)
        with pytest.raises(KeyboardInterrupt):
            _extract(model, saes, out)
        monkeypatch.setattr(type(saes[1]), "encode", encode)
        if stop == 0:  # stopped before the first batch: nothing is left to block a rerun
            assert not out.exists()
        else:
            assert read_manifest(out).status == "partial"
    store = _extract(model, saes, out)
    assert store.manifest["status"] == "complete"
    assert store_arrays(out) == store_arrays(reference.path)
    assert manifest_core(out) == manifest_core(reference.path)


def test_shards_merge_to_the_single_run(model, saes, reference, tmp_path):
    parts = [tmp_path / f"s{i}" for i in range(3)]
    for i, p in enumerate(parts):
        _extract(model, saes, p, shard=f"{i}/3")
    merged = merge_stores(parts[::-1], tmp_path / "merged")
    assert store_arrays(merged.path) == store_arrays(reference.path)
    assert manifest_core(merged.path) == manifest_core(reference.path)
    with pytest.raises(StoreError, match="exactly once"):
        merge_stores(parts[:2], tmp_path / "m2")


def test_a_wide_sae_is_extracted_block_by_block(model, saes, tmp_path, monkeypatch):
    """With blocks of 16 features (3 and 2 blocks for these SAEs), every statistic still equals
    a brute-force recomputation of the same block-wise encoding."""
    from extract_helpers import block_encode

    import scope.pipeline.feature_blocks as FB

    monkeypatch.setattr(FB, "FEATURE_BLOCK", 16)
    store = _extract(model, saes, tmp_path / "wide")
    _, feats = brute_force(model, saes, TEXTS, CTX, BS,
                           encode=lambda sae, x: block_encode(sae, x, 16))
    for name, f in zip(store.sae_names, feats, strict=True):
        flat = f.reshape(-1, f.shape[-1])
        assert np.array_equal(store.firing_counts(name), (flat != 0).sum(0))
        assert np.array_equal(store.max_activations(name), flat.max(0))
        for i in range(f.shape[-1]):
            ctx_max = f[:, :, i].max(1)
            order = sorted((w for w in range(len(f)) if ctx_max[w] > 0),
                           key=lambda w: (-ctx_max[w], w))[:K]
            assert [e.window for e in store.feature(name, i).top_examples] == order


def test_complete_store_is_reused_and_different_config_refused(model, saes, reference):
    before = store_arrays(reference.path)
    assert _extract(model, saes, reference.path).manifest["status"] == "complete"
    assert store_arrays(reference.path) == before
    with pytest.raises(StoreError, match="different configuration.*overwrite"):
        _extract(model, saes, reference.path, top_k=3)


def test_bad_inputs(model, saes, tmp_path):
    wrong = synthetic_sae(32, 8, "blocks.1.hook_resid_post")
    with pytest.raises(ShapeMismatchError, match="d_in=32"):
        _extract(model, [wrong], tmp_path / "a")
    with pytest.raises(CorpusError):
        scope.extract(model, saes, Corpus.from_texts(["   "]), tmp_path / "b", progress=False)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not empty"):
        _extract(model, saes, tmp_path / "c")
    with pytest.raises(StoreError, match="not a feature store"):
        open_store(tmp_path / "c")


def test_no_hooks_left(model, saes, reference):
    from scope.model.hooks import count_hooks

    assert count_hooks(model) == 0


def test_store_reads_without_torch(reference):
    import subprocess
    import sys

    code = ("import sys, scope; s = scope.open_store(sys.argv[1]); n = s.sae_names[0]; "
            "f = s.feature(n, 3); f.top_examples; f.band_examples; f.top_logits; f.histogram; "
            "s.densities(n); s.search_token(n, 'e'); "
            "assert 'torch' not in sys.modules, 'store reading imported torch'")
    subprocess.run([sys.executable, "-c", code, str(reference.path)], check=True)


def test_store_module_imports_only_numpy_and_safetensors():
    import ast
    from pathlib import Path

    import scope.store as mod

    tree = ast.parse(Path(mod.__file__).read_text())
    roots = {(n.module if isinstance(n, ast.ImportFrom) else a.name).split(".")[0]
             for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
             for a in (n.names if isinstance(n, ast.Import) else [n])}
    import sys

    assert roots - set(sys.stdlib_module_names) <= {"numpy", "safetensors", "scope", "__future__"}


def test_accumulator_state_lives_on_the_device_it_is_given(reference):
    """Every state tensor of a new and of a resumed accumulator lives on the device given (the
    SAE's): "meta" stands in for a GPU here, so a tensor left on the CPU by mistake fails."""
    from scope.pipeline.accumulators import FeatureAccumulator
    from scope.pipeline.checkpoint import load_state

    m = read_manifest(reference.path)
    resumed, _ = load_state(reference.path, m, devices=["meta"] * len(m.saes))
    for acc in [*(b for r in resumed for b in r.blocks), FeatureAccumulator(8, CTX, K,
                                                                          device="meta")]:
        tensors = [acc.count, acc.act_sum, acc.max, acc.hist, acc.sketch, acc._hist_inner,
                   acc._band_inner, acc._feat]
        for slots in [acc.top, *acc.bands]:
            tensors += [slots.key, slots.window, slots.value, slots.pos, slots.acts]
        assert {t.device.type for t in tensors} == {"meta"}


@pytest.mark.parametrize("field", ["dir", "data"])
def test_store_pointing_outside_is_refused(reference, tmp_path, field):
    """A manifest whose paths lead outside the store is refused by open_store and merge."""
    import json
    import shutil

    from scope.errors import StoreOutsideError

    root = tmp_path / "a" / "b" / "c" / "d"
    shard = root / "s0"
    shutil.copytree(reference.path, shard)
    m = json.loads((shard / "manifest.json").read_text())
    m["config"]["shard"] = m["shard"] = [0, 1]
    if field == "dir":
        m["saes"][0]["dir"] = "../../../../X"
    else:
        m["data"] = "../../../../X"
    (shard / "manifest.json").write_text(json.dumps(m))
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(StoreOutsideError, match=r"\.\./\.\./"):
        open_store(shard)
    with pytest.raises(StoreOutsideError):
        merge_stores([shard], root / "merged")
    after = sorted(p for p in tmp_path.rglob("*") if not p.is_relative_to(root / "merged"))
    assert after == before and not (tmp_path / "a" / "X").exists()
