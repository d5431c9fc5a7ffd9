"""The dashboard's Attribution page on a store built by the real extractor (tiny Gemma 3)."""

from __future__ import annotations

import json

import pytest
from test_dashboard import app_for, build_store, ok

pytestmark = pytest.mark.filterwarnings("ignore:.*hook_scale/hook_normalized")


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> str:
    return str(build_store(tmp_path_factory.mktemp("attr-page")))


def _specs(at) -> str:
    return " ".join(el.proto.spec for el in at.get("plotly_chart"))


def test_attribution_page_check_graph_and_escaping(store_path, monkeypatch):
    at = app_for(store_path, monkeypatch)
    at.switch_page("views/attribution.py").run()
    ok(at)
    # a target typed as Markdown is echoed as text, never as an image to fetch
    at.text_area(key="attr_prompt_in").input("the cat sat on the")
    at.text_input(key="attr_target_in").input("![t](http://attacker.invalid/target.png)")
    at.button[0].click().run()
    ok(at)
    (err,) = at.error
    assert "tokens" in err.value and "](http" not in err.value and "\\!\\[" in err.value
    at.text_input(key="attr_target_in").input(" ")
    at.button[0].click().run()
    assert not ok(at).error, [e.value for e in at.error]
    res = at.session_state["attr_result"]["res"]
    assert res.method == "ig" and res.ablation_check is not None
    spec = _specs(at)
    assert "predicted vs measured removal" in spec
    # store tokens with HTML (the corpus holds <script> and <img onerror>) never reach a label raw
    assert "<script" not in spec and "<img" not in spec
    # the graph of the same target, a readable subgraph by default
    at.button(key="attr_graph_go").click().run()
    ok(at)
    graph = at.session_state["attr_graph"]
    assert graph.logit_strings == [" "]  # the chosen target, not the top logits
    figs = [json.loads(el.proto.spec) for el in at.get("plotly_chart")]
    g = figs[-1]
    markers = [t for t in g["data"] if t.get("mode") == "markers"]
    shown = sum(len(t["x"]) for t in markers)
    assert shown <= 30 + graph.n_pos + 1
    colours = {t["marker"]["color"] for t in markers}
    edges = {t["line"]["color"] for t in g["data"] if t.get("mode") == "lines"}
    assert not colours & edges and len(colours) == len(markers)
