"""`scope export neuronpedia`: SAEDashboard batch JSON, read back and compared with the store."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scope  # noqa: E402
from scope.explore.neuronpedia import read_export  # noqa: E402


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    from explorer_helpers import build_store

    return build_store(tmp_path_factory.mktemp("npexport"))


def test_export_round_trip(store_path, tmp_path):
    from scope.cli.main import main

    out = tmp_path / "np"
    assert main(["export", "neuronpedia", str(store_path), "--out", str(out),
                 "--batch-size", "16"]) == 0
    store = scope.open_store(store_path)
    sae = store.sae_names[0]
    folders = list(out.iterdir())
    assert [f.name for f in folders] == ["tiny-gemma3_2-test-res-96"]
    batches = sorted(folders[0].glob("batch-*.json"))
    live = np.flatnonzero(store.firing_counts(sae) > 0)
    assert len(batches) == -(-len(live) // 16)
    head = json.loads(batches[0].read_text())
    assert (head["model_id"], head["layer"], head["sae_set"]) == ("tiny-gemma3", 2, "test-res-96")
    got = read_export(folders[0])
    assert sorted(got) == live.tolist()  # dead features are not exported
    for i in live:
        f, e = store.feature(sae, int(i)), got[int(i)]
        assert e["frac_nonzero"] == pytest.approx(f.density)
        assert e["pos_str"] == [t for t, _ in f.top_logits]
        assert e["neg_str"] == [t for t, _ in f.bottom_logits]
        assert e["pos_values"] == pytest.approx([v for _, v in f.top_logits], abs=6e-4)
        counts, _ = f.histogram
        assert sum(e["freq_hist_data_bar_heights"]) == int(np.asarray(counts).sum())
        assert all(v > 0 for v in e["freq_hist_data_bar_values"])
        top = [a for a in e["activations"] if a["bin_min"] == -1]
        assert [a["tokens"] for a in top] == [x.tokens for x in f.top_examples]
        for a, x in zip(top, f.top_examples, strict=True):
            assert a["values"] == pytest.approx(x.activations, abs=6e-4)
            assert max(a["values"]) == pytest.approx(x.max_activation, rel=2e-3)  # fp16 acts
        bands = [a for a in e["activations"] if a["bin_min"] != -1]
        want = [(b.low, b.high, x.tokens) for b in f.band_examples for x in b.examples]
        assert [(a["bin_min"], a["bin_max"], a["tokens"]) for a in bands] == [
            (pytest.approx(lo, abs=6e-4), pytest.approx(hi, abs=6e-4), t) for lo, hi, t in want]
        assert all(0 <= a["bin_contains"] <= 1 for a in bands)
