"""Feature labels: automatic labels, the labels file, Neuronpedia import, the feature list."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scope  # noqa: E402
from scope.errors import StoreError  # noqa: E402
from scope.explore.feature_list import FeatureTable  # noqa: E402
from scope.store import labels as L  # noqa: E402

# ---------------------------------------------------------------------------------------------
# automatic labels on hand-built values
# ---------------------------------------------------------------------------------------------


def test_auto_label_names_tokens_with_shares_and_flags():
    assert L.auto_label(0.002, 500, [(" the", 0.62), (" a", 0.2), ("\n", 0.05)]) == \
        "' the' 62% · ' a' 20% · '↵' 5%"
    assert L.auto_label(0.3, 90_000, [(" the", 0.1)]) == "' the' 10% [dense]"
    assert L.auto_label(1e-6, 3, [("def", 1.0)]) == "'def' 100% [rare]"  # rare, not single-token
    assert L.auto_label(0.001, 50, [("def", 0.95)]) == "'def' 95% [single-token]"
    assert L.auto_label(0.0, 0, [("x", 1.0)]) == "never fired on the store's corpus"
    assert L.auto_label(0.001, 50, [], [0, 1, 2, 1, 0]) == \
        "no token statistics [start-of-context]"
    # boundaries: exactly 1% is not dense, exactly RARE firings is not rare
    assert L.flags(L.DENSE, L.RARE) == []
    assert L.flags(0.0101, L.RARE - 1) == ["dense", "rare"]
    # 3 of 5 early peaks (60%) is not position-like
    assert "start-of-context" not in L.flags(0.001, 50, peak_positions=[0, 1, 2, 10, 20])


class _FakeExample:
    def __init__(self, pos):
        self.max_position = pos


class _FakeFeature:
    """Feature-like: what store v2's Feature offers (fires_on, firing_count, ...)."""

    def __init__(self, store_path, index, fires_on, count=100, density=0.001, positions=(5, 9)):
        self._store = type("S", (), {"path": Path(store_path)})()
        self.sae_name, self.index = "sae", index
        self.fires_on, self.firing_count, self.density = fires_on, count, density
        self.top_examples = [_FakeExample(p) for p in positions]


def test_feature_label_prefers_the_stored_explanation(tmp_path):
    f = _FakeFeature(tmp_path, 7, [(" cat", 0.5), (" dog", 0.25)])
    assert L.feature_label(f) == "' cat' 50% · ' dog' 25%"
    assert L.feature_explanation(f) is None
    labels = L.Labels(tmp_path)
    labels.update("sae", {7: L.Explanation("pets", 0.83, "gpt-x", "v1")})
    labels.save()
    assert L.feature_label(f) == "pets"
    exp = L.feature_explanation(f)
    assert (exp.text, exp.score, exp.explainer) == ("pets", 0.83, "gpt-x")
    # an explanation of another feature does not leak
    assert L.feature_label(_FakeFeature(tmp_path, 8, [("x", 1.0)])) == "'x' 100% [single-token]"


def test_labels_file_round_trip_and_corrupt_file(tmp_path):
    labels = L.Labels(tmp_path)
    labels.update("a", {1: L.Explanation("one"), 2: L.Explanation("two", 0.5)})
    labels.update("b", {0: L.Explanation("zero", None, "np", source="neuronpedia")})
    labels.save()
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temp file
    again = L.Labels(tmp_path)
    assert len(again) == 3
    assert again.get("a", 2) == L.Explanation("two", 0.5)
    assert again.get("b", 0).source == "neuronpedia"
    (tmp_path / L.LABELS_FILE).write_text("{not json")
    with pytest.raises(StoreError, match="labels.json"):
        L.Labels(tmp_path)


# ---------------------------------------------------------------------------------------------
# on a real store
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    from explorer_helpers import build_store

    return build_store(tmp_path_factory.mktemp("labels"))


def _fresh(store_path: Path, tmp_path: Path) -> Path:
    import shutil

    dst = tmp_path / "store"
    shutil.copytree(store_path, dst)
    return dst


def test_store_feature_label_is_always_a_string(store_path):
    store = scope.open_store(store_path)
    sae = store.sae_names[0]
    counts = store.firing_counts(sae)
    for i in range(store.n_features(sae)):
        f = store.feature(sae, i)
        assert isinstance(f.label, str) and f.label
        assert f.explanation is None
        if counts[i] == 0:
            assert f.label == "never fired on the store's corpus"


def _np_entry(index, text, layer="2-test-res-96", model="tiny-gemma3", **extra):
    """A row as Neuronpedia's export-data.py writes explanations (index is a string there)."""
    return {"id": f"c{index}", "modelId": model, "layer": layer, "index": str(index),
            "authorId": "x", "description": text, "embedding": None,
            "typeName": "oai_token-act-pair", "explanationModelName": "gpt-4o-mini", **extra}


def _jsonl(path: Path, rows, gz: bool = False) -> Path:
    import gzip

    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def test_neuronpedia_import_reads_todays_batches_and_the_old_list(store_path, tmp_path):
    from scope.explore.neuronpedia import import_explanations

    path = _fresh(store_path, tmp_path)
    before = {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}
    folder = tmp_path / "explanations"
    folder.mkdir()
    _jsonl(folder / "batch-0.jsonl.gz", [_np_entry(3, "the word fox"), _np_entry(4, "four")],
           gz=True)
    _jsonl(folder / "batch-1.jsonl", [_np_entry(5, "closing brackets", scores=[0.71]),
                                      _np_entry(5, "ignored: other layer", layer="3-test-res-96"),
                                      _np_entry(9, "ignored: other model", model="gemma-2-2b"),
                                      _np_entry(10_000, "out of range")])
    (folder / "batch-10.json").write_text(json.dumps([_np_entry(6, "six")]))
    store = scope.open_store(path)
    sae = store.sae_names[0]
    report = import_explanations(folder, store)
    assert [Path(f).name for f in report.files] == ["batch-0.jsonl.gz", "batch-1.jsonl",
                                                    "batch-10.json"]
    assert report.imported == {sae: 4}
    assert report.unmatched_sources == {"tiny-gemma3/3-test-res-96": 1,
                                        "gemma-2-2b/2-test-res-96": 1}
    assert report.out_of_range == 1 and report.rows == 7
    assert store.feature(sae, 3).label == "the word fox"
    assert store.feature(sae, 6).label == "six"
    e = store.feature(sae, 5).explanation
    assert (e.text, e.score, e.explainer) == ("closing brackets", 0.71, "neuronpedia:gpt-4o-mini")
    after = {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}
    assert set(after) - set(before) == {path / L.LABELS_FILE}  # only labels.json is new
    assert all(after[p] == b for p, b in before.items())
    # a glob names the same files
    path2 = _fresh(store_path, tmp_path / "b")
    report = import_explanations(str(folder / "batch-*.json*"), scope.open_store(path2))
    assert report.imported == {sae: 4} and len(report.files) == 3


def test_duplicates_keep_the_best_scored_and_scored_ones_are_kept(store_path, tmp_path):
    from scope.explore.neuronpedia import import_explanations

    path = _fresh(store_path, tmp_path)
    store = scope.open_store(path)
    sae = store.sae_names[0]
    labels = L.Labels(path)
    labels.update(sae, {2: L.Explanation("explained by scope", 0.9, "qwen", "v2"),
                        8: L.Explanation("unscored by scope", None, "qwen", "v2")})
    labels.save()
    file = _jsonl(tmp_path / "b.jsonl", [
        _np_entry(1, "first, unscored"), _np_entry(1, "scored 0.4", score=0.4),
        _np_entry(1, "scored 0.8", score=0.8), _np_entry(1, "scored 0.6", score=0.6),
        _np_entry(7, "tie one"), _np_entry(7, "tie two"),
        _np_entry(2, "neuronpedia's"), _np_entry(8, "replaces the unscored one")])
    report = import_explanations(file, store)
    assert report.duplicates_dropped == 4 and report.kept_scored == 1
    assert store.feature(sae, 1).explanation.text == "scored 0.8"
    assert store.feature(sae, 7).explanation.text == "tie one"  # first in file order
    assert store.feature(sae, 2).explanation.text == "explained by scope"
    assert store.feature(sae, 8).explanation.text == "replaces the unscored one"
    report = import_explanations(file, store, replace_scored=True)
    assert report.kept_scored == 0
    assert store.feature(sae, 2).explanation.text == "neuronpedia's"


def test_old_scores_read_as_the_old_protocol(tmp_path):
    (tmp_path / L.LABELS_FILE).write_text(json.dumps({"format_version": 1, "saes": {"s": {
        "3": {"text": "t", "score": 0.7, "explainer": "m", "prompt_version": "scope-explain-v1",
              "source": "explain"}}}}))
    e = L.Labels(tmp_path).get("s", 3)
    assert e.protocol == L.OLD_PROTOCOL and e.score == 0.7 and e.counts is None
    (tmp_path / L.LABELS_FILE).write_text(json.dumps({"format_version": 99, "saes": {}}))
    with pytest.raises(StoreError, match="labels format 99"):
        L.Labels(tmp_path)


def test_labels_import_cli(store_path, tmp_path, capsys):
    from scope.cli.main import main

    path = _fresh(store_path, tmp_path)
    file = tmp_path / "np.json"
    file.write_text(json.dumps([_np_entry(2, "numbers")]))
    assert main(["labels", "import", str(file), str(path)]) == 0
    assert "imported 1 explanations" in capsys.readouterr().out
    assert scope.open_store(path).feature(scope.open_store(path).sae_names[0], 2).label == "numbers"


def test_a_batch_imports_onto_an_sae_without_a_neuronpedia_id(store_path, tmp_path, capsys):
    """The demo's SAE has no Neuronpedia id: the refusal names the flag, and the flag works."""
    import gzip

    from scope.cli.main import main
    from scope.errors import ExplanationImportError
    from scope.explore.neuronpedia import import_explanations

    path = _fresh(store_path, tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["saes"][0]["neuronpedia_id"] = None
    (path / "manifest.json").write_text(json.dumps(manifest))
    rows = [_np_entry(i, f"feature {i} text", layer="5-gemmascope-2-res-16k",
                      model="gemma-3-270m") for i in range(0, 1024, 11)]
    batch = tmp_path / "batch-0.jsonl.gz"
    batch.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    store = scope.open_store(path)
    sae = store.sae_names[0]
    with pytest.raises(ExplanationImportError,
                       match=f"SAE {sae} has no Neuronpedia id.*pass --neuronpedia-id "
                             "gemma-3-270m/5-gemmascope-2-res-16k"):
        import_explanations(batch, store)
    assert not (path / L.LABELS_FILE).exists()
    assert main(["labels", "import", str(batch), str(path),
                 "--neuronpedia-id", "gemma-3-270m/5-gemmascope-2-res-16k"]) == 0
    out = capsys.readouterr().out
    d_sae = store.n_features(sae)
    fit = [i for i in range(0, 1024, 11) if i < d_sae]
    assert f"imported {len(fit)} explanations for {sae}" in out
    assert f"skipped {len(rows) - len(fit)} explanations of features past" in out
    store = scope.open_store(path)
    for i in range(d_sae):
        e = store.feature(sae, i).explanation
        assert (e.text if e else None) == (f"feature {i} text" if i in fit else None)
    for bad, msg in (("gemma-3-270m", "MODEL/SOURCE"), ("a/b/c", "MODEL/SOURCE")):
        with pytest.raises(ExplanationImportError, match=msg):
            import_explanations(batch, store, neuronpedia_id=bad)
    with pytest.raises(ExplanationImportError, match="give --neuronpedia-id"):
        import_explanations(batch, store, sae=sae)
    with pytest.raises(StoreError):
        import_explanations(batch, store, neuronpedia_id="m/s", sae="no-such-sae")


# ---------------------------------------------------------------------------------------------
# feature list
# ---------------------------------------------------------------------------------------------


def test_feature_table_sorts_filters_and_searches(store_path, tmp_path):
    path = _fresh(store_path, tmp_path)
    store = scope.open_store(path)
    sae = store.sae_names[0]
    labels = L.Labels(path)
    labels.update(sae, {4: L.Explanation("python logging handlers", 0.9),
                        6: L.Explanation("logging of errors", 0.6)})
    labels.save()
    table = FeatureTable.build(store, sae)
    dens, counts = store.densities(sae), store.firing_counts(sae)
    n = store.n_features(sae)
    # no filters: every feature, sorted by max activation descending, matches numpy
    page = table.query(sort="max_activation", page_size=n, hide_dense=False, hide_rare=False,
                       hide_dead=False)
    assert page.total == n
    got = [r.max_activation for r in page.rows]
    assert got == sorted(store.max_activations(sae).astype(float).tolist(), reverse=True)
    # default filters hide dense (> 1%), rare (< 10 firings) and dead features
    page = table.query(page_size=n)
    want = {i for i in range(n) if 0 < dens[i] <= L.DENSE and counts[i] >= L.RARE}
    assert {r.index for r in page.rows} == want and page.total == len(want)
    # density range
    lo, hi = np.quantile(dens[dens > 0], [0.25, 0.75])
    page = table.query(page_size=n, hide_dense=False, hide_rare=False, min_density=lo,
                       max_density=hi)
    assert {r.index for r in page.rows} == {i for i in range(n) if lo <= dens[i] <= hi}
    # ranked text search: both explained features match "logging", the better match first
    page = table.query("logging handlers", hide_dense=False, hide_rare=False)
    assert [r.index for r in page.rows][:2] == [4, 6]
    assert page.rows[0].relevance > page.rows[1].relevance > 0
    assert page.rows[0].label == "python logging handlers" and page.rows[0].score == 0.9
    assert table.query("zzzqqq-no-such-word").total == 0
    # paging
    p0 = table.query(page_size=5, hide_dense=False, hide_rare=False)
    p1 = table.query(page_size=5, page=1, hide_dense=False, hide_rare=False)
    assert len(p0.rows) == 5 and not {r.index for r in p0.rows} & {r.index for r in p1.rows}
    with pytest.raises(ValueError, match="cannot sort by"):
        table.query(sort="nope")
