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


# -- the vectorised table against the per-feature functions (issue 18: 1M features) --------------


def _adversarial_rows(seed: int, F: int = 400, k: int = 8):
    """Summary-like rows with repeated ids, invalid (-1) tokens, zero values, ids past the
    vocabulary, dead features and zero sketch estimates."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(-1, 12, (F, k)).astype(np.int32)
    values = np.where(rng.random((F, k)) < 0.25, 0.0, rng.uniform(0.1, 5, (F, k)))
    values = values.astype(np.float32)
    counts = np.where(rng.random(F) < 0.1, 0, rng.integers(1, 40, F)).astype(np.float64)
    est = np.where(rng.random((F, k)) < 0.2, 0, rng.integers(0, 60, (F, k))).astype(np.int64)
    return tokens, values, counts, est


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("n", [1, 3, 10])
@pytest.mark.parametrize("with_sketch", [True, False])
@pytest.mark.parametrize("shape", ["k8", "k1", "k20-wide-ids", "blocks-of-7"])
def test_top_shares_equal_token_shares_row_by_row(seed, n, with_sketch, shape, monkeypatch):
    """The block-wise, packed-key `top_shares` against `labels.token_shares`, one row at a time:
    rows split into blocks (a ragged last one), one column, 20 columns, and ids too large for
    the int32 key (the int64 one)."""
    from scope.store import bulk_labels as B
    from scope.store import labels as L
    from scope.store.bulk_labels import AutoLabels, top_shares

    k = {"k1": 1, "k20-wide-ids": 20}.get(shape, 8)
    tokens, values, counts, est = _adversarial_rows(seed, k=k)
    if shape == "k20-wide-ids":  # ids near 2**31: past the vocabulary, still "<id>" labels
        tokens = tokens.astype(np.int64)
        tokens = np.where(tokens >= 9, tokens - 9 + 2**31 - 4, tokens)
        assert B._packing(int(tokens.max()), k).dtype is np.int64
    if shape == "blocks-of-7":
        monkeypatch.setattr(B, "_ROWS", 7)
    vocab = [f"t{i}" for i in range(9)]  # ids 9..11 are past it: named "<id>"
    shares = top_shares(tokens, values, counts, est if with_sketch else None, n)
    auto = AutoLabels(np.full(len(counts), 1e-3), counts.astype(np.int64), shares, vocab)
    for i in range(len(counts)):
        want = L.token_shares(tokens[i], values[i], counts[i], vocab,
                              est[i] if with_sketch else None, n)
        assert auto.fires_on(i) == want, i  # strings and float shares, exactly
        assert shares.size[i] == len(want)
        assert auto[i] == L.auto_label(1e-3, int(counts[i]), want)
    assert shares.ids.shape == (len(counts), n) and (shares.ids[shares.shares == 0] == -1).all()


@pytest.mark.parametrize("block", [1, 3, 7, 400, 1000])
def test_lazy_shares_in_any_block_order_equal_top_shares(block, monkeypatch):
    """`LazyShares` asked for scattered rows, then a run, then everything, holds exactly what
    one `top_shares` pass gives, and computes only the blocks asked for (the sketch callable
    is asked for those rows only)."""
    from scope.store import bulk_labels as B

    monkeypatch.setattr(B, "_ROWS", 16)  # runs of blocks split into several calls
    tokens, values, counts, est = _adversarial_rows(3)
    want = B.top_shares(tokens, values, counts, est, 3)
    asked = []
    lazy = B.LazyShares(tokens, values, counts, lambda z: (asked.append(z), est[z])[1], 3, block)
    n_blocks = -(-len(counts) // block)
    rows = np.array([399, 5, 6, 250, 5])
    lazy.need(rows)
    assert lazy.blocks_done == len(set((rows // block).tolist()))
    assert {r // block for z in asked for r in range(z.start, z.stop)} == set(rows // block)
    for i in rows.tolist():
        ids, shares = lazy.row(i)
        assert ids.tolist() == want.ids[i, :want.size[i]].tolist()
        assert shares.tobytes() == want.shares[i, :want.size[i]].tobytes()
    lazy.need(np.arange(100, 140))
    got = lazy.all()
    assert lazy.blocks_done == n_blocks
    assert sum(z.stop - z.start for z in asked) == len(counts)  # every row read once
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_table_columns_equal_the_per_feature_computation(built, tmp_path):
    """Every label, explanation, score, top share and word flag of `FeatureTable.build` equals
    the plain per-feature loop the table used before it was vectorised."""
    import shutil

    from scope.store import labels as L

    store, sae, _, _ = built
    path = tmp_path / "store"
    shutil.copytree(store.path, path)
    labels = L.Labels(path)
    labels.update(sae, {2: L.Explanation("python logging handlers", 0.9),
                        5: L.Explanation("   "), 7: L.Explanation("errors", None),
                        10**6: L.Explanation("out of range", 0.5)})
    labels.save()
    store = scope.open_store(path)
    table = FL.FeatureTable.build(store, sae)
    summ = store._summary(sae)
    dens, count, vocab = store.densities(sae), store.firing_counts(sae), store.vocab
    n = store.n_features(sae)
    exps = L.labels_for(path).for_sae(sae)
    assert len(table.labels) == len(table.auto_labels) == len(table.explanations) == n
    for i in range(n):
        sketch = store._feature_rows(sae, i)["token_sketch"]
        est = L.sketch_estimates(sketch, summ["top_token"][i], i)
        fires = L.token_shares(summ["top_token"][i], summ["top_value"][i], float(count[i]),
                               vocab, est)
        auto = L.auto_label(float(dens[i]), int(count[i]), fires)
        e = exps.get(i)
        has = e is not None and bool(e.text.strip())
        assert table.auto_labels[i] == auto
        assert table.labels[i] == (e.text if has else auto)
        assert table.explanations[i] == (e.text if has else None)
        want_score = e.score if has and e.score is not None else None
        assert (None if np.isnan(table.score[i]) else table.score[i]) == want_score
        assert table.top_share[i] == (fires[0][1] if fires else 0.0)
        top = fires[0][0] if fires else ""
        assert table.top_word[i] == (sum(c.isalpha() for c in top) >= 2)
    assert list(table.labels) == [table.labels[i] for i in range(n)]
    assert table.labels[-1] == table.labels[n - 1] and table.labels[:3] == list(table.labels)[:3]
    assert table.labels[2] == "python logging handlers" and np.isnan(table.score[7])
    with pytest.raises(IndexError):
        table.labels[n]
    with pytest.raises(IndexError):
        table.explanations[n]


def test_bulk_fires_on_equals_feature_label_inputs(built):
    from scope.store import labels as L

    store, sae, _, _ = built
    summ, count = store._summary(sae), store.firing_counts(sae)
    fires = FL.bulk_fires_on(store, sae)
    for i in range(0, store.n_features(sae), 7):
        est = L.sketch_estimates(store._feature_rows(sae, i)["token_sketch"],
                                 summ["top_token"][i], i)
        assert fires[i] == L.token_shares(summ["top_token"][i], summ["top_value"][i],
                                          float(count[i]), store.vocab, est)


def test_sorted_pages_equal_numpy_stable_argsort(built):
    store, sae, _, _ = built
    table = FL.FeatureTable.build(store, sae)
    n = len(table)
    table.score[::3] = np.round(np.linspace(0, 1, len(table.score[::3])), 1)  # ties and nan
    for column in FL.COLUMNS:
        for descending in (True, False):
            col = table._column(column).astype(np.float64)
            col = np.where(np.isnan(col), -np.inf if descending else np.inf, col)
            want = np.argsort(-col if descending else col, kind="stable")
            page = table.query(sort=column, descending=descending, page_size=n,
                               hide_dense=False, hide_rare=False, hide_dead=False)
            assert [r.index for r in page.rows] == want.tolist(), (column, descending)


def _order_cases():
    rng = np.random.default_rng(0)
    out = [rng.normal(size=n) for n in (0, 1, 2, 5, 1000)]
    out += [rng.integers(-3, 3, 1000), np.round(rng.normal(size=3000), 1),
            rng.random(3000).astype(np.float32),
            np.array([np.iinfo(np.int64).max, np.iinfo(np.int64).min, 0, 5, -5])]
    x = rng.normal(size=5000)
    x[::3], x[1::7], x[5::11], x[6::13] = 0.0, -0.0, np.inf, -np.inf
    out.append(x)
    near = 1.0 + rng.integers(0, 5, 3000) * 2.0**-52  # equal leading bits, different values
    out.append(np.concatenate([near, -near, rng.normal(size=100), near[:50] * 3]))
    return out


@pytest.mark.parametrize("case", range(len(_order_cases())))
def test_stable_argsort_equals_numpy(case):
    from scope.explore.column_order import stable_argsort

    values = _order_cases()[case]
    got = stable_argsort(values)
    assert got.dtype == np.int64
    assert np.array_equal(got, np.argsort(values, kind="stable"))


@pytest.mark.parametrize("depth, width", [(1, 8), (3, 16), (2, 1)])
def test_sketch_rows_equal_sketch_estimates(depth, width):
    """The uint32 twin of `labels.sketch_estimates` the feature list reads range files with,
    on ids past 2**31 (int64 tokens), -1 tokens and feature offsets past 2**20."""
    from scope.store import labels as L
    from scope.store.bulk_labels import sketch_rows

    rng = np.random.default_rng(depth * width)
    m, k, start = 300, 7, 2**20 + 4096
    sketch = rng.integers(0, 10**6, (m, depth, width))
    tokens = rng.integers(-1, 300_000, (m, k))
    tokens[:5] += 2**31
    got = sketch_rows(sketch, tokens, start)
    feats = np.arange(start, start + m, dtype=np.int64)[:, None]
    want = L.sketch_estimates(sketch, tokens, feats)
    assert got.dtype == np.float64 and np.array_equal(got, want)
    for i in (0, 7, m - 1):  # and the per-feature call Feature.label makes
        assert np.array_equal(got[i], L.sketch_estimates(sketch[i], tokens[i], start + i))


def test_word_flags_equal_the_per_feature_rule():
    """`_word_flags` (one lookup table over the ids seen) against the rule row by row: no token
    (-1), ids past the vocabulary ("<id>") and an empty vocabulary are no words."""
    vocab = [" the", "a", "of", "!!", " x1y", "Ω", "ab"]
    top = np.array([-1, 0, 1, 2, 3, 4, 5, 6, 7, 99, 2**31 - 1, 0, -1, 6])
    want = [0 <= t < len(vocab) and sum(c.isalpha() for c in vocab[t]) >= 2 for t in top]
    assert FL._word_flags(vocab, top).tolist() == want
    assert not FL._word_flags([], top).any() and FL._word_flags(vocab, top[:0]).shape == (0,)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """A store whose 32 features lie in range files of 5 (the last one holds 2)."""
    from explorer_helpers import build_store

    import scope.pipeline.run as run

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run, "FEATURE_SHARD_SIZE", 5)
        store = scope.open_store(build_store(tmp_path_factory.mktemp("sharded"), tokens=1024))
    assert store.info.feature_shard_size == 5
    return store, store.sae_names[0]


@pytest.mark.parametrize("block", [1, 5])
@pytest.mark.parametrize("rows", [3, 5, 8, 1 << 15])
def test_table_over_range_files_equals_the_per_feature_computation(sharded, rows, block,
                                                                   monkeypatch):
    """Lazy blocks of one row or one range file, computed `rows` rows a call: calls inside one
    range file, on its bounds, and spanning several (the sketch estimates are read call by
    call): every automatic label, top share and word flag still equals `Feature.label`'s
    inputs, feature by feature."""
    from scope.explore import list_shares
    from scope.store import bulk_labels as B
    from scope.store import labels as L

    store, sae = sharded
    monkeypatch.setattr(B, "_ROWS", rows)
    monkeypatch.setattr(list_shares, "LABEL_BLOCK", block)
    table = FL.FeatureTable.build(store, sae)
    summ, count, dens = store._summary(sae), store.firing_counts(sae), store.densities(sae)
    for i in range(store.n_features(sae)):
        est = L.sketch_estimates(store._feature_rows(sae, i)["token_sketch"],
                                 summ["top_token"][i], i)
        fires = L.token_shares(summ["top_token"][i], summ["top_value"][i], float(count[i]),
                               store.vocab, est)
        assert table.auto_labels[i] == L.auto_label(float(dens[i]), int(count[i]), fires), i
        assert table.top_share[i] == (fires[0][1] if fires else 0.0)
        top = fires[0][0] if fires else ""
        assert table.top_word[i] == (sum(c.isalpha() for c in top) >= 2)
    assert table.shares.block == block
    assert (table.shares.all().size > 0).sum() >= 10  # not vacuous: most features fired


def test_lazy_table_equals_the_eager_one_and_a_page_computes_only_its_blocks(sharded,
                                                                             monkeypatch):
    """A page computes the label shares of the blocks its rows fall in (reading only those
    range files' token sketches), and nothing else; its labels, and after `all()` every row,
    equal the eager `top_shares` pass bit for bit."""
    from scope.store import labels as L
    from scope.store import schema as S
    from scope.store.bulk_labels import AutoLabels, top_shares

    store, sae = sharded
    summ, n = store._summary(sae), store.n_features(sae)
    est = np.stack([L.sketch_estimates(store._feature_rows(sae, i)[S.TOKEN_SKETCH],
                                       summ[S.TOP_TOKEN][i], i) for i in range(n)])
    # the eager pass: every row at once, the sketch estimates read feature by feature
    eager = top_shares(summ[S.TOP_TOKEN], summ[S.TOP_VALUE], store.firing_counts(sae), est)
    eager_auto = AutoLabels(store.densities(sae), store.firing_counts(sae), eager, store.vocab)
    read = []
    real_read = store._read
    monkeypatch.setattr(store, "_read", lambda path, keys=None, *a, **k: (
        read.append(path.name) if keys == [S.TOKEN_SKETCH] else None,
        real_read(path, keys, *a, **k))[1])
    table = FL.FeatureTable.build(store, sae)
    lazy = table.shares
    assert lazy.block == 5 and lazy.blocks_done == 0 and read == []  # range files of 5
    shown_blocks: set[int] = set()
    for sort in ("firing_count", "index"):
        page = table.query(sort=sort, descending=sort != "index", page_size=3,
                           hide_dense=False, hide_rare=False)
        shown_blocks |= {r.index // 5 for r in page.rows}
        assert lazy.blocks_done == len(shown_blocks) < -(-n // 5)
        assert sorted(set(read)) == sorted(S.features_filename(5 * b, min(5 * b + 5, n))
                                           for b in shown_blocks)
        for r in page.rows:
            assert r.label == eager_auto[r.index] == table.auto_labels[r.index]
            assert table.auto_labels.fires_on(r.index) == eager_auto.fires_on(r.index)
    got = lazy.all()  # the rest, after a page computed some blocks
    assert lazy.blocks_done == -(-n // 5)
    for a, b in zip(got, eager, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()
    assert table.top_share.tobytes() == eager.shares[:, 0].tobytes()
    assert table.top_word.tolist() == FL._word_flags(store.vocab, eager.ids[:, 0]).tolist()
    assert list(table.auto_labels) == list(eager_auto)
