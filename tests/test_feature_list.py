"""The feature list's rankings against a brute-force recount of the same corpus.

The store comes from the real extractor (tiny Gemma 3, random JumpReLU SAE); the reference
re-runs the model and SAE over the very windows the extractor read and counts, exactly, how
often each feature fired on each token. Token search, the home feature and the min-firings
rule are checked against that count, not against the store's own arrays.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scope  # noqa: E402
from scope.explore import feature_list as FL  # noqa: E402
from scope.store.labels import DENSE, RARE  # noqa: E402

CTX, TOKENS = 32, 3072


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from explorer_helpers import HOOK, build_store, corpus_texts

    from scope.model.activations import capture
    from scope.pipeline.corpus import Corpus, special_token_ids, token_windows

    root = tmp_path_factory.mktemp("flist")
    store = scope.open_store(build_store(root, tokens=TOKENS, ctx=CTX))
    model = scope.load_model(str(root / "model"), device="cpu", dtype=torch.float32)
    sae = scope.load_sae(str(root / "sae"), model=model)
    windows = torch.stack(list(token_windows(Corpus(texts=corpus_texts()), model.tokenizer,
                                             CTX, TOKENS)))
    with torch.no_grad():
        acts = sae.encode(capture(model, windows, [HOOK])[HOOK])  # [W, pos, d_sae]
    keep = ~torch.isin(windows, special_token_ids(model.tokenizer))  # BOS is never counted
    fired = (acts > 0) & keep[..., None]
    vocab = len(store.vocab)
    counts = np.zeros((sae.cfg.d_sae, vocab), dtype=np.int64)  # exact firings per token
    w, p, f = torch.nonzero(fired, as_tuple=True)
    np.add.at(counts, (f.numpy(), windows[w, p].numpy()), 1)
    occurrences = np.bincount(windows[keep].numpy(), minlength=vocab)
    return store, store.sae_names[0], counts, occurrences


def test_brute_force_agrees_with_the_store(built):
    store, sae, counts, _ = built
    assert np.array_equal(counts.sum(axis=1), store.firing_counts(sae))


def test_token_search_ranks_by_specificity(built):
    store, sae, counts, occ = built
    summ = store._summary(sae)
    checked = 0
    for token in [" the", " of", "the", " a", ".", " to", " logging", ","]:
        ids = FL.token_ids(store, token)
        hits = FL.token_search(store, sae, token, k=1000)
        if not ids or not hits:
            continue
        cand = np.flatnonzero((np.isin(summ["top_token"], ids) & (summ["top_value"] > 0))
                              .any(axis=1))
        on = counts[:, ids].sum(axis=1).astype(float)
        n_tok = float(occ[ids].sum())
        fire = counts.sum(axis=1).astype(float)
        expect = {int(f): (on[f] / fire[f]) * (on[f] / n_tok) for f in cand}
        assert {h.index for h in hits} == set(expect)
        for h in hits:  # the sketch's estimates equal the exact counts on this store
            assert h.firings_on_token == on[h.index]
            assert h.share_of_feature == pytest.approx(on[h.index] / fire[h.index])
            assert h.share_of_token == pytest.approx(on[h.index] / n_tok)
            assert h.score == pytest.approx(expect[h.index])
        order = sorted(expect, key=lambda f: (-expect[f], f))
        assert [h.index for h in hits] == order
        checked += 1
    assert checked >= 3


def test_token_search_puts_specific_features_above_large_ones(built):
    """The old ranking (raw max over the top contexts) against the new one on real tokens: a
    feature that fires on the token but mostly elsewhere ranks below a specific one even when
    its activation there is larger."""
    store, sae, counts, occ = built
    found = False
    for token in [" the", " of", ".", ",", " a", " to", " and", " is"]:
        hits = FL.token_search(store, sae, token, k=1000)
        raw = dict(store.search_token(sae, token, k=1000))
        if len(hits) < 2:
            continue
        best, top_raw = hits[0], max(raw, key=raw.get)
        if top_raw != best.index:
            loser = next(h for h in hits if h.index == top_raw)
            assert loser.share_of_feature * loser.share_of_token < best.score
            found = True
    assert found, "no token where raw max and specificity disagree on this store"


def _most_specific(store, sae, counts, max_density: float) -> int:
    """The home-feature rule recomputed from the exact counts."""
    fire = counts.sum(axis=1).astype(float)
    dens, vocab = store.densities(sae), store.vocab
    word, spec = {}, {}
    for f in range(counts.shape[0]):
        if fire[f] == 0 or dens[f] > max_density:
            continue
        t = int(np.argmax(counts[f]))  # the token it fires on most, exactly (lowest id on ties)
        key = counts[f, t] / fire[f] * fire[f] / (fire[f] + RARE)
        spec[f] = key
        if sum(c.isalpha() for c in vocab[t]) >= 2:
            word[f] = key
    for pool in (word, spec):
        if pool:
            return min(pool, key=lambda f: (-pool[f], f))
    return int(np.argmax(fire))


def test_home_feature_is_the_most_specific_live_one(built):
    store, sae, counts, _ = built
    table = FL.FeatureTable.build(store, sae)
    # every live feature of a random SAE is dense: the default rule falls back to the feature
    # that fired most; with dense features allowed the specificity ranking itself is checked
    assert table.most_specific() == _most_specific(store, sae, counts, DENSE)
    assert table.most_specific(1.0) == _most_specific(store, sae, counts, 1.0)
    assert table.most_specific(1.0) != int(np.argmax(counts.sum(axis=1)))


def test_sorting_by_max_hides_features_with_too_few_firings(built):
    store, sae, counts, _ = built
    table = FL.FeatureTable.build(store, sae)
    fire = counts.sum(axis=1)
    # every feature of this store fires hundreds of times: the median makes the rule bite
    floor = int(np.median(fire[fire > 0]))
    for column in FL.SAMPLE_COLUMNS:
        values = getattr(store, {"max_activation": "max_activations",
                                 "mean_activation": "mean_activations"}[column])(sae)
        res = table.query(sort=column, page_size=10_000, hide_dense=False, hide_rare=False,
                          min_firings=floor)
        expect = [int(f) for f in np.argsort(-values.astype(np.float64), kind="stable")
                  if fire[f] >= floor]
        assert [r.index for r in res.rows] == expect
        assert 0 < res.total < int((fire > 0).sum())


def test_query_ranks_by_relevance_by_default(built):
    store, sae, _, _ = built
    table = FL.FeatureTable.build(store, sae)
    word = next(w for lab in table.auto_labels for w in lab.replace("'", " ").split()
                if w.isalpha() and len(w) > 2)
    res = table.query(word, page_size=1000, hide_dense=False, hide_rare=False)
    rel = table.search_scores(word)
    assert [r.index for r in res.rows] == [int(i) for i in np.argsort(-rel, kind="stable")
                                           if rel[i] > 0 and table.firing_count[i] > 0]
