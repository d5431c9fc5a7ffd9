"""The Streamlit dashboard, page by page, against stores built by the real extractor.

Every page runs under `streamlit.testing.v1.AppTest` (no exceptions, widgets select the expected
feature); the live pages use a tiny Gemma 3 checkpoint and a random JumpReLU SAE. The corpus
holds `<script>` and `<img onerror>` text so that escaping is checked on real store tokens. The
browser test serves `scope dashboard` on a free port and loads it in headless Chromium.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "scope" / "dashboard" / "app.py"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from streamlit.testing.v1 import AppTest  # noqa: E402

import scope  # noqa: E402
from scope.dashboard import data, render  # noqa: E402

HTML_TEXT = '<script>alert("x")</script> <img src=x onerror=alert(1)> the cat sat on the mat.'
NEURONPEDIA_ID = "tiny-gemma3/2-test-res-128"
D_SAE = 128
HOOK = "blocks.2.hook_resid_post"
DEAD = 8
HOOK2, D_SAE2 = "blocks.1.hook_resid_post", 64


def build_store(root: Path, *, d_sae: int = D_SAE, tokens: int = 2048, ctx: int = 32,
                neuronpedia_id: str | None = NEURONPEDIA_ID, seed: int = 1) -> Path:
    """Tiny Gemma 3 checkpoint + random SAE (saved, reloaded by path) -> scope.pipeline.extract -> store."""
    import torch
    from builders import TINY_TEXT, tiny_gemma3_dir
    from sae_builders import jumprelu_weights

    from scope.pipeline.corpus import Corpus
    from scope.saes.sae import JumpReLUSAE, SAEConfig

    model_dir = tiny_gemma3_dir(root / "model")
    model = scope.load_model(str(model_dir), device="cpu", dtype=torch.float32)
    w = jumprelu_weights(model.cfg.d_model, d_sae, seed=seed)
    w["threshold"][-DEAD:] = 1e6  # a few features that can never fire (dead)
    cfg = SAEConfig(d_in=model.cfg.d_model, d_sae=d_sae, hook_name=HOOK,
                    neuronpedia_id=neuronpedia_id)
    JumpReLUSAE(cfg, **{k: torch.tensor(v) for k, v in w.items()}).save(root / "sae")
    # a second, narrower SAE at another site, to check the SAE selector
    w2 = jumprelu_weights(model.cfg.d_model, D_SAE2, seed=seed + 1)
    cfg2 = SAEConfig(d_in=model.cfg.d_model, d_sae=D_SAE2, hook_name=HOOK2)
    JumpReLUSAE(cfg2, **{k: torch.tensor(v) for k, v in w2.items()}).save(root / "sae2")
    saes = [scope.load_sae(str(root / d), model=model) for d in ("sae", "sae2")]
    corpus = Corpus(texts=[HTML_TEXT] * 12 + list(TINY_TEXT) * 6)
    scope.extract(model, saes, corpus, str(root / "store"), tokens=tokens, ctx=ctx, batch_size=8,
                  progress=False, sae_specs=[str(root / "sae"), str(root / "sae2")])
    return root / "store"


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> str:
    return str(build_store(tmp_path_factory.mktemp("dash")))


@pytest.fixture(scope="module")
def modelless_store(tmp_path_factory) -> str:
    """A store whose model checkpoint is gone: only the store can be read."""
    root = tmp_path_factory.mktemp("dash-nomodel")
    path = build_store(root, neuronpedia_id=None)
    shutil.rmtree(root / "model")
    return str(path)


def app_for(path: str, monkeypatch, **query) -> AppTest:
    monkeypatch.setenv(data.STORE_ENV, path)
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.query_params.update({k: str(v) for k, v in query.items()})
    return at.run()


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def html_text(at: AppTest) -> str:
    return "".join(h.value for h in at.html)


def visible_text(fragment: str) -> str:
    """What a browser shows for an HTML fragment: tags dropped, entities decoded."""
    return html.unescape(re.sub(r"<[^>]*>", "", fragment))


# ---------------------------------------------------------------------------------------------
# feature page
# ---------------------------------------------------------------------------------------------


def test_feature_page_renders_store_values(store_path, monkeypatch):
    store = scope.open_store(store_path)
    sae = store.sae_names[0]
    f = int(np.argmax(store.densities(sae)))
    at = ok(app_for(store_path, monkeypatch, feature=f))
    feat = store.feature(sae, f)
    assert at.subheader[0].value == f"Feature {f}"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Max activation"] == f"{feat.max_activation:.3g}"
    assert metrics["Firing count"] == f"{feat.firing_count:,}"
    assert len(at.get("plotly_chart")) == 1
    page = html_text(at)
    assert feat.top_examples and page.count('class="scope-tok"') > len(feat.top_examples)
    for tok, _ in feat.top_logits[:3]:
        assert html.escape(tok.replace("\n", "↵"), quote=True) in page
    links = at.get("link_button")
    assert links and links[0].proto.url == f"https://www.neuronpedia.org/{NEURONPEDIA_ID}/{f}"


def test_feature_page_says_when_neighbours_are_approximate(store_path, tmp_path, monkeypatch):
    import json

    caption = "Approximate neighbours"
    store = scope.open_store(store_path)
    assert [store.sae_info(n)["neighbours"] for n in store.sae_names] == ["exact", "exact"]
    at = ok(app_for(store_path, monkeypatch, feature=1))
    assert not any(caption in c.value for c in at.caption)
    # the same store as a 1M-feature SAE's would be on a CPU: its manifest says approximate
    copy = tmp_path / "store"
    shutil.copytree(store_path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["saes"][0]["neighbours"] = "approximate"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    at = ok(app_for(str(copy), monkeypatch, feature=1))
    assert any(caption in c.value for c in at.caption)


def test_feature_navigation_widgets(store_path, monkeypatch):
    store = scope.open_store(store_path)
    sae = store.sae_names[0]
    at = ok(app_for(store_path, monkeypatch))
    from scope.explore.feature_list import FeatureTable

    home = FeatureTable.build(store, sae).most_specific()  # test_feature_list checks the rule
    assert at.session_state["feature"] == home  # no deep link: the most specific live feature
    at.number_input(key="feature_box").set_value(7).run()
    assert ok(at).session_state["feature"] == 7 and at.subheader[0].value == "Feature 7"
    at.button(key="next").click().run()
    assert ok(at).session_state["feature"] == 8 and at.number_input(key="feature_box").value == 8
    at.button(key="prev").click().run()
    at.button(key="prev").click().run()
    assert ok(at).session_state["feature"] == 6 and at.subheader[0].value == "Feature 6"
    at.number_input(key="feature_box").set_value(0).run()
    at.button(key="prev").click().run()
    assert ok(at).session_state["feature"] == 0  # clamped at the first feature
    live = set(np.flatnonzero(store.densities(sae) > 0).tolist())
    for _ in range(3):
        at.button(key="random").click().run()
        assert ok(at).session_state["feature"] in live


def test_sae_selector_switches_every_page(store_path, monkeypatch):
    store = scope.open_store(store_path)
    first, second = store.sae_names
    at = ok(app_for(store_path, monkeypatch, feature=100))
    from scope.dashboard.render import short_sae_names

    short = short_sae_names([first, second])  # the box shows short names, holds full ones
    assert at.selectbox(key="sae_box").options == [short[first], short[second]]
    assert at.selectbox(key="sae_box").value == first
    assert at.session_state["sae"] == first and at.session_state["feature"] == 100
    at.selectbox(key="sae_box").set_value(second).run()
    ok(at)
    assert at.session_state["sae"] == second
    assert at.session_state["feature"] == D_SAE2 - 1  # clamped into the narrower SAE
    assert at.number_input(key="feature_box").max == D_SAE2 - 1
    feat = store.feature(second, D_SAE2 - 1)
    assert at.metric[1].value == f"{feat.max_activation:.3g}"
    at.switch_page("views/overview.py").run()
    assert {m.label: m.value for m in ok(at).metric}["Features"] == f"{D_SAE2:,}"
    at.switch_page("views/inspector.py").run()
    assert ok(at).session_state["sae"] == second


def test_feature_search_by_token(store_path, monkeypatch):
    store = scope.open_store(store_path)
    sae = store.sae_names[0]
    from scope.explore.feature_list import token_search

    token, hits = next((t, h) for t in ["t", "a", "e", "<", "s", "c"]
                       if (h := token_search(store, sae, t, k=20)))
    at = ok(app_for(store_path, monkeypatch))
    at.text_input(key="search_token").input(token).run()
    box = ok(at).selectbox(key="search_pick")
    labels = [store.feature(sae, h.index).label for h in hits]
    assert box.options == [f"#{h.index}  ({h.share_of_feature:.0%} of its firings, "
                           f"{h.share_of_token:.0%} of the token's)  {lab[:60]}"
                           for h, lab in zip(hits, labels, strict=True)]
    target = hits[min(1, len(hits) - 1)].index
    box.set_value(target).run()
    at.button(key="search_open").click().run()
    assert ok(at).session_state["feature"] == target
    assert at.subheader[0].value == f"Feature {target}"


def test_feature_list_sorts_a_query_by_relevance_until_the_user_picks(store_path, monkeypatch):
    from scope.explore.feature_list import FeatureTable

    store = scope.open_store(store_path)
    table = FeatureTable.build(store, store.sae_names[0])
    word = next(w for lab in table.auto_labels for w in lab.replace("'", " ").split()
                if w.isalpha() and len(w) > 2)
    at = app_for(store_path, monkeypatch)
    at.switch_page("views/features.py").run()
    assert ok(at).selectbox(key="fl_sort").value == "density"
    for box in ("fl_dense", "fl_rare"):  # a random SAE: most features are dense
        at.checkbox(key=box).uncheck().run()
    at.text_input(key="fl_text").input(word).run()
    assert ok(at).selectbox(key="fl_sort").value.startswith("relevance")
    shown = [r["feature"] for r in at.dataframe[0].value.to_dict("records")]
    expect = table.query(word, hide_dense=False, hide_rare=False, page_size=50).rows
    assert shown == [r.index for r in expect]  # ranked by BM25, best first
    at.selectbox(key="fl_sort").set_value("firing count").run()  # the user's pick stays
    at.text_input(key="fl_text").input(word + " x").run()
    assert ok(at).selectbox(key="fl_sort").value == "firing count"
    assert "fl_trust" not in [t.key for t in at.toggle]  # the few-firings rule: max/mean only
    at.selectbox(key="fl_sort").set_value("max activation").run()
    assert ok(at).toggle(key="fl_trust").value  # hides features with too few firings
    at.text_input(key="fl_text").input("").run()  # cleared: the user's pick is forgotten
    at.text_input(key="fl_text").input(word).run()
    assert ok(at).selectbox(key="fl_sort").value.startswith("relevance")


def test_store_tokens_with_html_render_escaped(store_path, monkeypatch):
    store = scope.open_store(store_path)
    sae = store.sae_names[0]
    f = int(np.argmax(store.densities(sae)))
    at = ok(app_for(store_path, monkeypatch, feature=f))
    at.toggle(key="full_contexts").set_value(True).run()
    page = html_text(ok(at))
    assert "<script" not in page and "<img" not in page
    assert "&lt;" in page
    shown = visible_text(page)
    assert "<script>alert" in shown and "<img src=x" in shown  # the corpus text, as text


def test_dead_feature_renders(store_path, monkeypatch):
    store = scope.open_store(store_path)
    dead = np.flatnonzero(store.densities(store.sae_names[0]) == 0)
    assert set(range(D_SAE - DEAD, D_SAE)) <= set(dead.tolist())
    at = ok(app_for(store_path, monkeypatch, feature=int(dead[0])))
    assert at.metric[0].value == "0% (dead)"
    assert not at.get("plotly_chart")


def test_damaged_labels_file_hides_explanations_not_the_store(store_path, tmp_path, monkeypatch):
    """A corrupt labels.json: the page shows the feature's data and says what is wrong with the
    labels file, never that the store is broken or must be extracted again."""
    path = tmp_path / "store"
    shutil.copytree(store_path, path)
    (path / "labels.json").write_text("{not json")
    at = ok(app_for(str(path), monkeypatch, feature=1))
    assert at.subheader[0].value == "Feature 1"
    assert not at.error, [e.value for e in at.error]
    assert any("labels.json cannot be read" in w.value.replace("\\", "") for w in at.warning)
    assert at.metric[0].value == render.format_density(scope.open_store(path).feature(
        scope.open_store(path).sae_names[0], 1).density)


def test_a_store_rewritten_while_open_is_not_called_broken():
    from scope.errors import StoreChangedError, StoreCorruptError

    changed = render.store_error_message(StoreChangedError("gen-000001 replaced gen-000000"))
    assert "intact" in changed and "Reload" in changed and "Extract it again" not in changed
    assert "Extract it again" in render.store_error_message(StoreCorruptError("x"))


# ---------------------------------------------------------------------------------------------
# overview
# ---------------------------------------------------------------------------------------------


def test_overview_page(store_path, monkeypatch):
    store = scope.open_store(store_path)
    at = app_for(store_path, monkeypatch)
    at.switch_page("views/overview.py").run()
    ok(at)
    metrics = {m.label: m.value for m in at.metric}
    dens = store.densities(store.sae_names[0])
    assert metrics["Dead features"] == f"{int((dens == 0).sum()):,}"
    assert metrics["Features"] == f"{D_SAE:,}"
    assert metrics["Tokens"] == f"{int(store.manifest['tokens']):,}"
    assert len(at.get("plotly_chart")) == 1
    assert at.json[0].value  # the manifest


# ---------------------------------------------------------------------------------------------
# live pages
# ---------------------------------------------------------------------------------------------


def test_inspector_selects_and_opens_feature(store_path, monkeypatch):
    at = app_for(store_path, monkeypatch)
    at.switch_page("views/inspector.py").run()
    ok(at)
    at.toggle(key="inspect_hide_dense").set_value(False).run()  # a random SAE: most are dense
    at.toggle(key="inspect_hide_rare").set_value(False).run()
    at.text_area(key="inspect_text").input("the cat sat <b>on</b> the mat").run()
    table = next(h.value for h in ok(at).html if "<table" in h.value)
    assert "BOS: not read by SAEs" in table
    assert "&lt;" in table and "<b>" not in table
    box = at.selectbox(key="inspect_feature")
    assert box.options, "no feature fired on the prompt"
    target = int(box.options[min(2, len(box.options) - 1)].split()[0].lstrip("#"))
    box.set_value(target).run()
    prompt_html = [h.value for h in ok(at).html if "scope-tokens" in h.value][-1]
    assert 'class="scope-tok"' in prompt_html and "<b>" not in prompt_html
    # every feature id in the table links to its feature page
    ids = re.findall(r'href="\./\?sae=[^"&]*&amp;feature=(\d+)"[^>]*>#(\d+)<', table)
    assert ids and all(a == b for a, b in ids)
    at.button(key="inspect_open").click().run()
    ok(at)
    assert at.session_state["feature"] == target
    assert at.subheader[0].value == f"Feature {target}"


def _steer(at: AppTest, spec: str) -> dict:
    at.text_input(key="steer_spec").input(spec).run()
    at.number_input(key="steer_max_tokens").set_value(12).run()
    at.button(key="steer_go").click().run()
    ok(at)
    return at.session_state["steer_result"]


def test_steering_changes_text_only_when_strong(store_path, monkeypatch):
    at = app_for(store_path, monkeypatch)
    at.switch_page("views/steering.py").run()
    ok(at)
    at.checkbox(key="steer_relative").uncheck().run()  # raw strengths
    zero = _steer(at, "3:0")
    assert zero["runs"][0]["text"] == zero["default"]
    strong = _steer(at, "3:60")
    assert strong["default"] == zero["default"]  # same seed, same default
    assert strong["runs"][0]["text"] != strong["default"]
    texts = [t.value for t in at.text]
    assert texts == [strong["prompt"] + strong["default"], strong["prompt"] + strong["runs"][0]["text"]]
    row = at.dataframe[-1].value.to_dict("records")[0]
    assert (row["feature"], row["mode"], row["strength"], row["applied (raw)"]) == (3, "add", 60, 60)


def test_steering_defaults_are_multiples_of_max_and_sweep(store_path, monkeypatch):
    from scope.steer import defaults as sd

    store = scope.open_store(store_path)
    sae = store.sae_names[0]
    f = int(np.argmax(store.max_activations(sae)))
    at = app_for(store_path, monkeypatch, feature=f)
    at.switch_page("views/steering.py").run()
    assert ok(at).text_input(key="steer_spec").value == ""  # never pre-filled
    assert at.button(key="steer_go").disabled
    at.button(key="steer_add_current").click().run()  # the feature page's feature, on request
    assert ok(at).text_input(key="steer_spec").value == f"{f}:{sd.STRENGTH_X_MAX:g}"
    at.button(key="steer_add_current").click().run()  # listed once
    assert ok(at).text_input(key="steer_spec").value == f"{f}:{sd.STRENGTH_X_MAX:g}"
    at.number_input(key="steer_max_tokens").set_value(8).run()
    at.button(key="steer_go").click().run()
    run = ok(at).session_state["steer_result"]["runs"][0]
    peak = float(store.max_activations(sae)[f])
    assert run["applied"][f] == pytest.approx(sd.STRENGTH_X_MAX * peak)
    at.button(key="steer_sweep").click().run()
    result = ok(at).session_state["steer_result"]
    assert [r["level"] for r in result["runs"]] == list(sd.SWEEP)
    assert [r["applied"][f] for r in result["runs"]] == pytest.approx([m * peak for m in sd.SWEEP])
    assert result["runs"][0]["text"] == result["default"]  # 0x max is the default text
    assert result["runs"][0]["loss"] == pytest.approx(result["base_loss"], abs=1e-5)
    assert len(at.text) == len(sd.SWEEP)


def test_steering_finds_features_by_label(store_path, monkeypatch):
    store = scope.open_store(store_path)
    sae = store.sae_names[0]
    at = app_for(store_path, monkeypatch, feature=0)
    at.switch_page("views/steering.py").run()
    from scope.explore.feature_list import FeatureTable

    table = FeatureTable.build(store, sae)
    rows = table.query(page_size=200, hide_dense=False, hide_rare=False).rows
    word = next(w.strip() for r in rows for w in r.label.split("'")
                if w.strip().isalpha() and len(w.strip()) > 2)
    at.text_input(key="steer_find").input(word).run()
    box = ok(at).selectbox(key="steer_found")
    pick = box.value
    assert box.options and word in table.labels[pick]
    at.button(key="steer_add").click().run()
    from scope.steer import defaults as sd

    assert ok(at).text_input(key="steer_spec").value == f"{pick}:{sd.STRENGTH_X_MAX:g}"


def test_steering_rejects_bad_spec(store_path, monkeypatch):
    at = app_for(store_path, monkeypatch)
    at.switch_page("views/steering.py").run()
    at.text_input(key="steer_spec").input(f"{D_SAE + 5}:3").run()
    assert "out of range" in ok(at).error[0].value
    at.text_input(key="steer_spec").input("three:3").run()
    assert "not an integer" in ok(at).error[0].value


def test_without_model_store_pages_work_and_live_pages_explain(modelless_store, monkeypatch):
    at = ok(app_for(modelless_store, monkeypatch, feature=1))
    assert at.subheader[0].value == "Feature 1"
    assert not at.get("link_button")  # no Neuronpedia id
    for page in ["views/overview.py", "views/inspector.py", "views/steering.py"]:
        at.switch_page(page).run()
        ok(at)
        if page != "views/overview.py":
            assert at.warning and "unavailable" in at.warning[0].value
            assert "cannot load model" in at.warning[0].value


# ---------------------------------------------------------------------------------------------
# the command and the browser
# ---------------------------------------------------------------------------------------------


def test_dashboard_command_line(store_path, tmp_path):
    from scope.dashboard.launch import dashboard_argv

    argv = dashboard_argv(store_path)
    assert argv[argv.index("--server.address") + 1] == "127.0.0.1"
    assert argv[argv.index("--server.port") + 1] == "8501"
    assert argv[argv.index("--server.headless") + 1] == "true"
    assert argv[-2:] == ["--", str(Path(store_path).resolve())]
    assert Path(argv[argv.index("run") + 1]) == APP
    argv = dashboard_argv(store_path, "0.0.0.0", 9000)
    assert "0.0.0.0" in argv and "9000" in argv
    from scope.cli.main import main

    assert main(["dashboard", str(tmp_path)]) == 2  # not a store: a clear error, no server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_alive(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"scope dashboard exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"dashboard did not answer at {url} within {timeout}s")


def test_ctrl_c_stops_the_dashboard_cleanly_and_the_url_is_printed_once(store_path):
    port = _free_port()
    cmd = [sys.executable, "-m", "scope.cli.main", "dashboard", store_path, "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                            start_new_session=True)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", proc)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends to `scope dashboard`
        out, _ = proc.communicate(timeout=60)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, out
    assert out.count(f"http://127.0.0.1:{port}") == 1, out  # scope's line; no Streamlit banner
    assert "dashboard stopped" in out and "Traceback" not in out, out
    assert not _server_alive(port)


@pytest.mark.browser
def test_browser_feature_page(store_path, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "headless Chromium is missing: run `make browser`"
    store = scope.open_store(store_path)
    f = int(np.argmax(store.densities(store.sae_names[0])))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "scope.cli.main", "dashboard", store_path, "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True)
    try:
        _wait_healthy(url, proc)
        opts = webdriver.ChromeOptions()
        opts.binary_location = chromium
        for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                     "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync",
                     f"--user-data-dir={tmp_path / 'chrome-profile'}", "--window-size=1400,1600"]:
            opts.add_argument(flag)
        browser = webdriver.Chrome(service=Service(driver), options=opts)
        try:
            browser.get(f"{url}/?feature={f}")
            WebDriverWait(browser, 90).until(
                lambda b: len(b.find_elements(By.CSS_SELECTOR, "span.scope-tok")) > 20)
            time.sleep(1.5)  # let the chart finish drawing before the screenshot
            shot = Path(os.environ.get("SCOPE_SCREENSHOT_DIR", tmp_path)) / "feature_page.png"
            shot.parent.mkdir(parents=True, exist_ok=True)
            assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
            spans = browser.find_elements(By.CSS_SELECTOR, "span.scope-tok")
            shaded = [s for s in spans if "rgba(255, 138, 0" in (s.get_attribute("style") or "")]
            assert shaded, "no token is shaded"
            assert all(s.get_attribute("title") for s in shaded[:20])  # value on hover
            assert f"Feature {f}" in browser.page_source
            # corpus HTML is text: no element was made from it, its characters are visible
            assert not browser.find_elements(By.CSS_SELECTOR, "img[src='x']")
            boxes = browser.find_elements(By.CSS_SELECTOR, "div.scope-tokens")
            assert any("<script>alert" in b.text or "<img src=x" in b.text for b in boxes)
            assert not any("alert" in (s.get_attribute("innerHTML") or "")
                           for s in browser.find_elements(By.TAG_NAME, "script"))
            # a deep link to another page still goes through the router (sidebar SAE selector)
            browser.get(f"{url}/overview")
            WebDriverWait(browser, 60).until(lambda b: "Dead features" in b.page_source)
            assert "KeyError" not in browser.page_source and "SAE" in browser.page_source
        finally:
            browser.quit()
    finally:
        proc.terminate()  # `scope dashboard` stops its Streamlit server on SIGTERM
        try:
            assert proc.wait(timeout=30) == 128 + signal.SIGTERM
        finally:
            try:  # never leave a server behind, whatever happened above
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert not _server_alive(port), "the Streamlit server outlived `scope dashboard`"
