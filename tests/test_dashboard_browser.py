"""Every dashboard page in headless Chromium, and text from a hostile store kept inert.

`test_browser_every_page` serves a store built by the real extractor with `scope dashboard` and
opens the feature list, a feature, the prompt inspector, steering (with a generate click) and
the overview at 900 px and 1400 px wide, saving a screenshot of each ($SCOPE_SCREENSHOT_DIR,
else the test's tmp folder) and failing on any number, label or button cut by an ellipsis and
on anything that scrolls sideways (the page, a table, the sidebar's SAE box).
$SCOPE_BROWSER_STORE points it at another store instead (e.g. `scope demo`'s runs/demo, to see
the pages at demo scale).
`test_browser_hostile_manifest` writes Markdown image and link payloads pointing at a local
listener into every manifest field, the SAE name, the model spec and a label; a page that
rendered any of them as Markdown would make the browser fetch the image: the listener must
record no request and no element may link to it. Corrupt stores show a message, not a trace.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_dashboard import (  # noqa: E402
    _free_port,
    _server_alive,
    _wait_healthy,
    app_for,
    build_store,
)

import scope  # noqa: E402

PAGES = ["features", "feature", "inspector", "steering", "overview"]


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> str:
    if os.environ.get("SCOPE_BROWSER_STORE"):
        return os.environ["SCOPE_BROWSER_STORE"]
    return str(build_store(tmp_path_factory.mktemp("dash-browser")))


def _shots(tmp_path: Path) -> Path:
    out = Path(os.environ.get("SCOPE_SCREENSHOT_DIR", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    return out


class _Dashboard:
    """`scope dashboard STORE` on a free port and a headless Chromium looking at it."""

    def __init__(self, store: str, tmp_path: Path, width: int = 1500) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
        assert chromium and driver, "headless Chromium is missing: run `make browser`"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "scope.cli.main", "dashboard", store, "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.browser = None
        try:
            _wait_healthy(self.url, self.proc)
            opts = webdriver.ChromeOptions()
            opts.binary_location = chromium
            for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                         "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync",
                         f"--user-data-dir={tmp_path / 'chrome-profile'}",
                         f"--window-size={width},1700"]:
                opts.add_argument(flag)
            self.browser = webdriver.Chrome(service=Service(driver), options=opts)
        except BaseException:
            self.close()
            raise

    def open(self, page: str, query: str = "", until=None, timeout: float = 120) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        path = "" if page == "feature" else page
        self.browser.get(f"{self.url}/{path}{query}")
        WebDriverWait(self.browser, timeout).until(
            lambda b: b.find_elements("css selector", "h3") and (until is None or until(b)))
        self.settle()

    def settle(self, timeout: float = 120) -> None:
        """Wait until Streamlit has finished the run (no stale elements, no spinner)."""
        from selenium.webdriver.support.ui import WebDriverWait

        time.sleep(0.5)
        WebDriverWait(self.browser, timeout).until(lambda b: not b.find_elements(
            "css selector", "[data-stale='true'], [data-testid='stSpinner']"))
        time.sleep(1.0)  # charts finish drawing

    def shot(self, path: Path) -> None:
        assert self.browser.save_screenshot(str(path)) and path.stat().st_size > 10_000

    def click(self, text: str, until=None, timeout: float = 300) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        button = next(b for b in self.browser.find_elements("css selector", "button")
                      if b.text.strip() == text)
        button.click()
        time.sleep(0.5)
        WebDriverWait(self.browser, timeout).until(
            lambda b: "Generating…" not in b.page_source and (until is None or until(b)))
        self.settle()

    def close(self) -> None:
        if self.browser is not None:
            self.browser.quit()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        finally:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert not _server_alive(self.port), "the Streamlit server outlived `scope dashboard`"


def _no_error(browser) -> None:
    src = browser.page_source
    assert "Traceback" not in src and "stException" not in src, "a page shows an exception"


# Elements whose text a narrow column could cut with an ellipsis: metric values and labels,
# widget labels, buttons. Any with hidden overflow is reported with its text.
_CUT = """
const out = [];
const sel = '[data-testid="stMetricValue"], [data-testid="stMetricLabel"], ' +
            '[data-testid="stWidgetLabel"], [data-testid="stMain"] button';
for (const root of document.querySelectorAll(sel)) {
  if (!root.offsetParent) continue;
  for (const e of [root, ...root.querySelectorAll('*')]) {
    const s = getComputedStyle(e);
    if (e.scrollWidth > e.clientWidth + 1 && s.overflow !== 'visible' && e.innerText.trim())
      out.push(e.innerText.trim().slice(0, 60));
  }
}
return out;
"""


# Anything that scrolls sideways: the page, the main column, a grid (`st.dataframe` draws its
# cells on a canvas inside `.dvn-scroller`), a static table; text that runs over the right edge
# of its column; and a sidebar select box whose value (an <input>) is wider than the box.
_SIDEWAYS = """
const out = [];
const wide = (e) => e.scrollWidth > e.clientWidth + 1;
const root = document.documentElement;
if (wide(root)) out.push(`page ${root.scrollWidth} > ${root.clientWidth}`);
const main = document.querySelector('[data-testid="stMain"]');
if (main && wide(main)) out.push(`main ${main.scrollWidth} > ${main.clientWidth}`);
for (const s of document.querySelectorAll('[data-testid="stDataFrame"] .dvn-scroller'))
  if (wide(s)) out.push(`grid ${s.scrollWidth} > ${s.clientWidth}`);
for (const t of document.querySelectorAll('[data-testid="stTable"]'))
  for (const e of [t, ...t.querySelectorAll('div')])
    if (wide(e)) out.push(`table ${e.scrollWidth} > ${e.clientWidth}`);
for (const col of document.querySelectorAll('[data-testid="stMain"] [data-testid="stColumn"]')) {
  const edge = col.getBoundingClientRect().right + 1;
  for (const e of col.querySelectorAll('p, label, span'))
    if (e.offsetParent && e.innerText.trim() && e.getBoundingClientRect().right > edge)
      out.push(`'${e.innerText.trim().slice(0, 40)}' runs over its column`);
}
for (const i of document.querySelectorAll('[data-testid="stSidebar"] input'))
  if (i.offsetParent && wide(i)) out.push(`sidebar box '${i.value}' ${i.scrollWidth} > ${i.clientWidth}`);
return out;
"""


def _nothing_cut(browser, page: str) -> None:
    cut = browser.execute_script(_CUT)
    assert not cut, f"{page}: text cut by an ellipsis: {cut}"
    sideways = browser.execute_script(_SIDEWAYS)
    assert not sideways, f"{page}: scrolls sideways: {sideways}"


@pytest.mark.browser
@pytest.mark.parametrize("width", [900, 1400])
def test_browser_every_page(store_path, tmp_path, width):
    out = _shots(tmp_path)
    store = scope.open_store(store_path)
    sae = store.sae_names[0]
    f = int(np.argmax(store.densities(sae)))
    dash = _Dashboard(store_path, tmp_path, width)
    b = dash.browser
    try:
        dash.open("features", until=lambda b: "features match" in b.page_source)
        assert "Feature list" in b.page_source
        for label in b.find_elements(  # a random SAE: most features are dense; show them
                "xpath", "//label[contains(., 'Hide dense') or contains(., 'Hide rare')]"):
            label.click()
            dash.settle()
        grids = b.find_elements("css selector", '[data-testid="stDataFrame"]')
        assert grids, "the feature list shows no table"
        _no_error(b)
        _nothing_cut(b, "features")
        dash.shot(out / f"feature_list_{width}.png")

        dash.open("feature", until=lambda b: len(b.find_elements("css selector",
                                                                  "span.scope-tok")) > 5)
        _no_error(b)
        _nothing_cut(b, "home")
        dash.shot(out / f"home_{width}.png")

        dash.open("feature", f"?feature={f}",
                  until=lambda b: len(b.find_elements("css selector", "span.scope-tok")) > 20)
        assert f"Feature {f}" in b.page_source and store.feature(sae, f).label.split("'")[1] in \
            b.page_source
        _no_error(b)
        _nothing_cut(b, "feature")
        dash.shot(out / f"feature_page_{width}.png")

        dash.open("feature", "?feature=99999", until=lambda b: "does not exist" in b.page_source)
        _no_error(b)

        dash.open("inspector", until=lambda b: "Top features per token" in b.page_source)
        for label in b.find_elements(  # a random SAE: show its dense and rare features too
                "xpath", "//label[contains(., 'Hide dense features') or "
                "contains(., 'Hide rare features')]"):
            label.click()
            dash.settle()
        links = b.find_elements("css selector", "a[href*='feature=']")
        assert links, "inspector feature ids are not links"
        _no_error(b)
        _nothing_cut(b, "inspector")
        dash.shot(out / f"inspector_{width}.png")
        target = links[0].text.lstrip("#")
        links[0].click()  # an id opens its feature page
        dash.settle()
        assert f"Feature {target}" in b.page_source

        dash.open("steering", until=lambda b: "Strength sweep" in b.page_source)
        box = b.find_element("css selector", "input[aria-label^='Features and strengths']")
        assert box.get_attribute("value") == ""  # nothing steered that the user did not pick
        dash.click(next(x.text.strip() for x in b.find_elements("css selector", "button")
                        if x.text.strip().startswith("Add feature")))
        dash.click("Generate", until=lambda b: "drift" in b.page_source)
        _no_error(b)
        _nothing_cut(b, "steering")
        dash.shot(out / f"steering_{width}.png")
        try:
            dash.click("Strength sweep", until=lambda b: "× max" in b.page_source)
        except Exception:
            dash.shot(out / f"steering_sweep_failed_{width}.png")
            raise
        dash.shot(out / f"steering_sweep_{width}.png")

        dash.open("overview", until=lambda b: "Dead features" in b.page_source)
        _no_error(b)
        _nothing_cut(b, "overview")
        dash.shot(out / f"overview_{width}.png")
    finally:
        dash.close()


class _Listener:
    """A tiny HTTP server that records every request made to it."""

    def __init__(self) -> None:
        hits = self.hits = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                hits.append(self.path)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def payload(self, field: str) -> str:
        base = f"http://127.0.0.1:{self.port}"
        return (f"![x]({base}/img-{field}.png) [link]({base}/link-{field}) {base}/auto-{field} "
                f"<img src='{base}/html-{field}.png'>")

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _poison(store: Path, listen: _Listener) -> None:
    """Put a payload into every manifest field a page shows, the SAE name and a label."""
    from scope.store.labels import Explanation, Labels

    path = store / "manifest.json"
    m = json.loads(path.read_text())
    # the store refuses non-numbers in its numeric fields and an unknown status on open
    # (tests/test_hostile_store.py), so the payloads go into every field that is free text
    for key in ["tool_version", "created"]:
        m[key] = listen.payload(key)
    m["corpus"] = {"source": listen.payload("corpus"), "name": listen.payload("corpus-name")}
    m["model"] = {"name": listen.payload("model-name"), "spec": listen.payload("model-spec")}
    for i, s in enumerate(m["saes"]):
        s["name"] = listen.payload(f"sae{i}")
        s["hook_name"] = listen.payload(f"hook{i}")
        s["spec"] = listen.payload(f"spec{i}")
    path.write_text(json.dumps(m))
    labels = Labels(store)
    labels.update(m["saes"][0]["name"], {i: Explanation(listen.payload(f"label{i}"), 0.5,
                                                        listen.payload("explainer"))
                                         for i in range(8)})
    labels.save()


@pytest.mark.browser
def test_browser_hostile_manifest(store_path, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(store_path, store)
    listen = _Listener()
    _poison(store, listen)
    out = _shots(tmp_path)
    dash = _Dashboard(str(store), tmp_path)
    b = dash.browser
    try:
        for page in PAGES:
            query = "?feature=3" if page == "feature" else ""
            dash.open(page, query)
            _no_error(b)
            if page == "features":  # search the poisoned labels too
                box = b.find_element("css selector", "input[aria-label^='Search labels']")
                box.send_keys("link\n")
                dash.settle()
            dash.shot(out / f"hostile_{page}.png")
            anchors = [a.get_attribute("href") or "" for a in
                       b.find_elements("css selector", "a")]
            assert not [h for h in anchors if f":{listen.port}" in h], (page, anchors)
            images = [i.get_attribute("src") or "" for i in b.find_elements("css selector", "img")]
            assert not [s for s in images if f":{listen.port}" in s], (page, images)
            shown = b.find_element("css selector", "body").text.replace("\u2060", "")
            assert f"![x](http://127.0.0.1:{listen.port}" in shown, page  # shown as text
        time.sleep(1)
        assert listen.hits == [], f"the browser fetched {listen.hits}"
    finally:
        dash.close()
        listen.close()


def test_corrupt_store_shows_a_message_not_a_trace(store_path, tmp_path, monkeypatch):
    store = tmp_path / "store"
    shutil.copytree(store_path, store)
    # a truncated summary: opening the store works, reading any feature fails
    summary = next(store.rglob("summary.safetensors"))
    summary.write_bytes(summary.read_bytes()[:100])
    at = app_for(str(store), monkeypatch, feature=1)
    assert not at.exception
    shown = " ".join(e.value for e in at.error)
    assert "cannot be read" in shown and str(tmp_path) not in shown
    # an unreadable manifest: the same, before any page
    (store / "manifest.json").write_text("{not json")
    at = app_for(str(store), monkeypatch)
    assert not at.exception
    shown = " ".join(e.value for e in at.error)
    assert "cannot be read" in shown and str(tmp_path) not in shown and "Traceback" not in shown
