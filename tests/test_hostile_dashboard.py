"""Issue 19's dashboard cases with hostile text from a file: explanations (labels.json) made of
HTML links and Markdown images, and a model spec in the manifest that is a Markdown image. The
pages run under Streamlit's AppTest on a store built by the real extractor; every string must
reach the page as text: no `<a href` in a plot's tick labels, no `](http` left unescaped in a
warning (the browser would fetch or link it).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_dashboard import app_for, build_store, ok

import scope
from scope.store import labels as L

pytestmark = pytest.mark.filterwarnings("ignore:.*hook_scale/hook_normalized")

EVIL = '<a href="http://evil.invalid/x">click</a> ![i](http://evil.invalid/label.png)'


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return build_store(tmp_path_factory.mktemp("hostile-dash"))


def _hostile_labels(path: Path) -> None:
    store = scope.open_store(path)
    labels = L.Labels(path)
    for name in store.sae_names:
        labels.update(name, {i: L.Explanation(f"{EVIL} {i}", 0.9, "m", "v2")
                             for i in range(store.n_features(name))})
    labels.save()


def test_hostile_labels_stay_text_in_the_attribution_heatmap(built, tmp_path, monkeypatch):
    path = tmp_path / "store"
    shutil.copytree(built, path)
    _hostile_labels(path)  # the manifest still names the built model and SAEs
    at = app_for(str(path), monkeypatch)
    at.switch_page("views/attribution.py").run()
    ok(at)
    at.text_area(key="attr_prompt_in").input("the cat sat on the")
    at.text_input(key="attr_target_in").input(" ")
    at.button[0].click().run()
    assert not ok(at).error, [e.value for e in at.error]
    specs = " ".join(el.proto.spec for el in at.get("plotly_chart"))
    assert "Strongest feature attributions by token" in specs
    assert "evil.invalid" in specs  # the labels did reach the heatmap ...
    assert "<a href" not in specs and "<a " not in specs  # ... as text, never as a link
    assert "&lt;a href" in specs
    shown = " ".join(str(getattr(e, "value", "")) for e in at.markdown)
    assert "](http" not in shown and '<a href="http://evil' not in shown


def test_model_spec_from_the_manifest_is_quoted_as_text(built, tmp_path, monkeypatch):
    path = tmp_path / "store"
    shutil.copytree(built, path)
    m = json.loads((path / "manifest.json").read_text())
    m["model"]["spec"] = str(tmp_path / "gone") + "/![m](http://evil.invalid/spec.png)"
    (path / "manifest.json").write_text(json.dumps(m))
    for page in ["views/inspector.py", "views/steering.py", "views/attribution.py"]:
        at = app_for(str(path), monkeypatch)
        at.switch_page(page).run()
        ok(at)
        warnings = [w.value for w in at.warning] + [e.value for e in at.error]
        assert any("evil" in w for w in warnings), (page, warnings)
        for w in warnings:
            assert "](http" not in w and "![" not in w, (page, w)
        assert (path / "manifest.json").read_text() == json.dumps(m)  # a reader never writes
