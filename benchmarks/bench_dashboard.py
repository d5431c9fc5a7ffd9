"""Dashboard feature-page render time on a 16k-feature store (target: under 300 ms).

Builds a store with the real extractor (tiny Gemma 3 checkpoint, a random 16,384-feature JumpReLU
SAE, a few thousand tokens), then renders the feature page with `streamlit.testing.v1.AppTest`
for features it has not shown before (so every render reads the store: no cache hits) and
prints the median and 90th percentile with their ratio to the 300 ms target. A breakdown times
the parts without Streamlit: reading one feature, building its HTML, building and serialising
its histogram figure. With `--browser` it also serves the store with `scope dashboard` and
times, in headless Chromium, a click on "Next" until the next feature's page is painted (this
includes Streamlit's websocket round trip and the browser drawing plotly and the contexts).

With `--list` it times the feature list instead, on a 131,072-feature store by default: the
one-off build of the table (labels and text index), then sorting, filtering and ranked text
search server side (target: each under 300 ms), and the list page's script run in AppTest.

    python benchmarks/bench_dashboard.py [--d-sae 16384] [--features 20] [--tokens 4096]
                                         [--browser]   # also end to end in headless Chromium
    python benchmarks/bench_dashboard.py --list [--d-sae 131072] [--synthetic]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TARGET_MS = 300.0


def build_store(root: Path, d_sae: int, tokens: int) -> Path:
    import torch
    from builders import TINY_TEXT, tiny_gemma3_dir
    from sae_builders import jumprelu_weights

    import scope
    from scope.pipeline.corpus import Corpus
    from scope.saes.sae import JumpReLUSAE, SAEConfig

    model = scope.load_model(str(tiny_gemma3_dir(root / "model")), device="cpu",
                             dtype=torch.float32)
    w = jumprelu_weights(model.cfg.d_model, d_sae, seed=0)
    cfg = SAEConfig(d_in=model.cfg.d_model, d_sae=d_sae, hook_name="blocks.2.hook_resid_post",
                    neuronpedia_id="tiny-gemma3/2-bench-res-16k")
    JumpReLUSAE(cfg, **{k: torch.tensor(v) for k, v in w.items()}).save(root / "sae")
    sae = scope.load_sae(str(root / "sae"), model=model)
    texts = [t for t in Path(logging.__file__).read_text().split("\n\n") if t.strip()]
    corpus = Corpus(texts=texts + list(TINY_TEXT))
    scope.extract(model, [sae], corpus, str(root / "store"), tokens=tokens, ctx=128,
                  batch_size=8, progress=False, sae_specs=[str(root / "sae")])
    return root / "store"


def _ms(seconds: float) -> float:
    return 1000.0 * seconds


def bench_apptest(store: Path, features: list[int]) -> list[float]:
    """Wall time of a full feature-page script run per not-yet-seen feature."""
    from streamlit.testing.v1 import AppTest

    from scope.dashboard import data

    os.environ[data.STORE_ENV] = str(store)
    at = AppTest.from_file(str(ROOT / "scope" / "dashboard" / "app.py"), default_timeout=120)
    at.run()  # warm-up: imports, opening the store, the density vector
    if at.exception:
        raise SystemExit(f"the feature page failed: {at.exception[0].value}")
    times = []
    for f in features:
        at.session_state["feature"] = f
        t0 = time.perf_counter()
        at.run()
        times.append(_ms(time.perf_counter() - t0))
        if at.exception or at.subheader[0].value != f"Feature {f}":
            raise SystemExit(f"feature {f} did not render: {[e.value for e in at.exception]}")
    return times


def bench_parts(store: Path, features: list[int]) -> dict[str, float]:
    """Median ms of the page's parts without Streamlit (fresh store handle: no caches)."""
    import plotly.io as pio

    import scope
    from scope.dashboard import data, render

    s = scope.open_store(store)
    name = s.sae_names[0]
    s.densities(name)
    read, build, fig = [], [], []
    for f in features:
        t0 = time.perf_counter()
        v = data.to_view(s.feature(name, f), name)
        t1 = time.perf_counter()
        for e in v.top_examples:
            render.example_html(e.tokens, e.activations, e.max_position, v.max_activation)
        for b in v.band_examples:
            for e in b.examples:
                render.example_html(e.tokens, e.activations, e.max_position, v.max_activation)
        render.logit_table_html(v.top_logits, "+")
        render.logit_table_html(v.bottom_logits, "-")
        t2 = time.perf_counter()
        pio.to_json(render.histogram_figure(v.hist_counts, v.hist_edges), validate=False)
        t3 = time.perf_counter()
        read.append(_ms(t1 - t0))
        build.append(_ms(t2 - t1))
        fig.append(_ms(t3 - t2))
    return {"read feature": statistics.median(read), "build HTML": statistics.median(build),
            "histogram figure + JSON": statistics.median(fig)}


# In the page: click "Next", then poll every animation frame until the new feature's header is
# shown and no element of the previous run is stale, then wait two frames (painted).
_CLICK_NEXT_AND_WAIT = """
const want = arguments[0], done = arguments[arguments.length - 1];
const t0 = performance.now();
const next = [...document.querySelectorAll('button')].find(b => b.innerText.includes('Next'));
function poll() {
  const shown = [...document.querySelectorAll('h3')]
    .some(h => h.innerText.startsWith('Feature ' + want));
  const stale = document.querySelectorAll("[data-stale='true']").length;
  if (shown && stale === 0) {
    requestAnimationFrame(() => requestAnimationFrame(() => done(performance.now() - t0)));
  } else if (performance.now() - t0 > 30000) { done(null); } else { requestAnimationFrame(poll); }
}
next.click();
requestAnimationFrame(poll);
"""


def bench_browser(store: Path, start: int, n: int) -> list[float]:
    """Time in headless Chromium from clicking "Next" to the next feature's page painted."""
    import shutil
    import socket
    import urllib.request

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from scope.dashboard.launch import start_dashboard, stop_dashboard

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = start_dashboard(store, port=port, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    times = []
    try:
        for _ in range(180):
            try:
                urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        opts = webdriver.ChromeOptions()
        opts.binary_location = shutil.which("chromium")
        profile = tempfile.mkdtemp(prefix="scope-bench-chrome-")
        for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                     "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync",
                     f"--user-data-dir={profile}", "--window-size=1400,1400"]:
            opts.add_argument(flag)
        browser = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)

        try:
            browser.get(f"{url}/?feature={start}")
            WebDriverWait(browser, 120).until(
                lambda b: b.find_elements(By.CSS_SELECTOR, "span.scope-tok"))
            time.sleep(2)  # let the first page settle (plotly's bundle loads once)
            browser.set_script_timeout(60)
            for i in range(start + 1, start + 1 + n):
                ms = browser.execute_async_script(_CLICK_NEXT_AND_WAIT, i)
                if ms is None:
                    raise SystemExit(f"feature {i} was not drawn in the browser")
                times.append(float(ms))
        finally:
            browser.quit()
            shutil.rmtree(profile, ignore_errors=True)
    finally:
        stop_dashboard(proc)
    return times


def synthetic_table(d_sae: int, seed: int = 0):
    """A FeatureTable of `d_sae` features with store-like columns and automatic labels (no
    store: times the queries alone, in seconds instead of an extraction's minutes)."""
    import numpy as np

    from scope.explore.feature_list import FeatureTable
    from scope.store import labels as L

    rng = np.random.default_rng(seed)
    density = np.where(rng.random(d_sae) < 0.1, 0.0, 10 ** rng.uniform(-7, -0.5, d_sae))
    count = np.round(density * 2e6).astype(np.int64)
    max_act = np.where(count > 0, 10 ** rng.uniform(0, 3.5, d_sae), 0.0)
    words = [w for w in Path(logging.__file__).read_text().split() if w.isalpha()][:3000]
    labels = [L.auto_label(float(density[i]), int(count[i]),
                           [(f" {words[(i * 7 + j) % len(words)]}", 0.5 / (j + 1)) for j in range(3)])
              for i in range(d_sae)]
    return FeatureTable(density, count, max_act, max_act * 0.3, labels, [None] * d_sae, labels,
                        np.full(d_sae, np.nan))


def bench_list(store: Path | None, d_sae: int) -> int:
    """Feature list: build once, then time sort / filter / search queries and the page run."""
    from streamlit.testing.v1 import AppTest

    import scope
    from scope.dashboard import data
    from scope.explore.feature_list import COLUMNS, FeatureTable

    t0 = time.perf_counter()
    if store is None:
        table = synthetic_table(d_sae)
    else:
        s = scope.open_store(store)
        table = FeatureTable.build(s, s.sae_names[0])
    built = _ms(time.perf_counter() - t0)
    t0 = time.perf_counter()
    table.search_scores("warm")  # builds the BM25 index
    indexed = _ms(time.perf_counter() - t0)
    print(f"feature list: {len(table):,} features{' (synthetic table)' if store is None else ''}; "
          f"table built in {built:.0f} ms, text index in {indexed:.0f} ms (once per SAE and "
          "server)")
    words = [w.strip("'") for lab in table.labels[:2000] for w in lab.split()
             if w.strip("'").isalpha()][:5]
    cases = {f"sort by {c}": dict(sort=c) for c in COLUMNS}
    cases.update({
        "sort by density, ascending": dict(sort="density", descending=False),
        "no filters": dict(hide_dense=False, hide_rare=False, hide_dead=False),
        "density range 1e-5..1e-3": dict(min_density=1e-5, max_density=1e-3),
        "page 100": dict(page=100),
    })
    for w in words[:3]:
        cases[f"search {w!r}"] = dict(text=w)
    worst = 0.0
    for label, kw in cases.items():
        kw = dict(kw)
        text = kw.pop("text", "")
        runs = []
        for rep in range(5):
            if rep == 0:
                table._orders.clear()  # the first sort by a column pays its argsort
            t0 = time.perf_counter()
            page = table.query(text, **kw)
            runs.append(_ms(time.perf_counter() - t0))
        worst = max(worst, runs[0], statistics.median(runs))
        print(f"  {label:<34} first {runs[0]:7.1f} ms, then median {statistics.median(runs[1:]):6.1f}"
              f" ms  ({page.total:,} match)")
    if store is None:
        print(f"worst query {worst:.1f} ms; ratio to the {TARGET_MS:.0f} ms target: "
              f"{worst / TARGET_MS:.2f}")
        return 0 if worst < TARGET_MS else 1
    if store is None:
        print(f"worst query {worst:.1f} ms; ratio to the {TARGET_MS:.0f} ms target: "
              f"{worst / TARGET_MS:.2f}")
        return 0 if worst < TARGET_MS else 1
    os.environ[data.STORE_ENV] = str(store)
    at = AppTest.from_file(str(ROOT / "scope" / "dashboard" / "app.py"), default_timeout=600)
    at.run()
    at.switch_page("views/features.py").run()  # builds and caches the table
    if at.exception:
        raise SystemExit(f"the feature list failed: {at.exception[0].value}")
    page_runs = []
    for key, value in [("fl_sort", "max activation"), ("fl_sort", "firing count"),
                       ("fl_dense", False), ("fl_rare", False), ("fl_sort", "index")]:
        widget = at.checkbox(key=key) if key in ("fl_dense", "fl_rare") else at.selectbox(key=key)
        widget.set_value(value)
        t0 = time.perf_counter()
        at.run()
        page_runs.append(_ms(time.perf_counter() - t0))
        if at.exception:
            raise SystemExit(f"the feature list failed: {at.exception[0].value}")
    at.text_input(key="fl_text").input(words[0] if words else "the")
    t0 = time.perf_counter()
    at.run()
    page_runs.append(_ms(time.perf_counter() - t0))
    med = statistics.median(page_runs)
    print(f"feature list page run (AppTest, sort/filter/search): median {med:.1f} ms, max "
          f"{max(page_runs):.1f} ms")
    print(f"worst query {worst:.1f} ms; ratio to the {TARGET_MS:.0f} ms target: "
          f"{worst / TARGET_MS:.2f} (queries), {med / TARGET_MS:.2f} (page)")
    return 0 if max(worst, med) < TARGET_MS else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d-sae", type=int, default=None, help="SAE width (default 16,384; "
                    "131,072 with --list)")
    ap.add_argument("--features", type=int, default=20, help="features to render")
    ap.add_argument("--tokens", type=int, default=4096, help="extraction token budget")
    ap.add_argument("--store", type=Path, help="use this store instead of building one")
    ap.add_argument("--list", action="store_true",
                    help="time the feature list (131,072 features unless --d-sae is given)")
    ap.add_argument("--synthetic", action="store_true",
                    help="with --list: time queries on a synthetic table (no extraction)")
    ap.add_argument("--browser", action="store_true",
                    help="also time Next-click to drawn page in headless Chromium (end to end)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import streamlit.logger

    streamlit.logger.set_log_level("error")  # no "no runtime" warnings outside a server
    # AppTest resets levels on every run; a filter stays
    logging.getLogger("streamlit.runtime.scriptrunner_utils.script_run_context").addFilter(
        lambda record: "missing ScriptRunContext" not in record.getMessage())

    import numpy as np

    import scope

    if args.d_sae is None:
        args.d_sae = 131_072 if args.list else 16_384
    with tempfile.TemporaryDirectory(prefix="scope-bench-dash-") as tmp:
        if args.list and args.synthetic:
            return bench_list(None, args.d_sae)
        if args.list:
            t0 = time.perf_counter()
            store = args.store or build_store(Path(tmp), args.d_sae, args.tokens)
            print(f"store built in {time.perf_counter() - t0:.1f} s")
            return bench_list(store, args.d_sae)
        t0 = time.perf_counter()
        store = args.store or build_store(Path(tmp), args.d_sae, args.tokens)
        built = time.perf_counter() - t0
        s = scope.open_store(store)
        name = s.sae_names[0]
        dens = s.densities(name)
        live = np.flatnonzero(dens > 0)
        rng = np.random.default_rng(0)
        picks = rng.choice(live, size=min(args.features, len(live)), replace=False).tolist()
        n_examples = len(s.feature(name, picks[0]).top_examples)
        print(f"store: {s.n_features(name):,} features, {len(live):,} live, "
              f"{int(s.manifest.get('tokens') or 0):,} tokens, {n_examples} top contexts per "
              f"feature (built in {built:.1f} s)")
        parts = bench_parts(store, picks)
        times = bench_apptest(store, picks)
        browser = bench_browser(store, int(live[0]), args.features) if args.browser else None
    median = statistics.median(times)
    p90 = float(np.percentile(times, 90))
    for k, v in parts.items():
        print(f"  {k:<26} {v:7.1f} ms (median)")
    print(f"feature page render (AppTest, uncached): median {median:.1f} ms, p90 {p90:.1f} ms, "
          f"max {max(times):.1f} ms over {len(times)} features")
    print(f"ratio to the {TARGET_MS:.0f} ms target: {median / TARGET_MS:.2f} "
          f"(p90 {p90 / TARGET_MS:.2f}; below 1.00 meets it)")
    if browser:
        bmed = statistics.median(browser)
        print(f"end to end in headless Chromium (Next click -> page painted): median "
              f"{bmed:.1f} ms, p90 {float(np.percentile(browser, 90)):.1f} ms; ratio to the "
              f"target {bmed / TARGET_MS:.2f}")
        median = max(median, bmed)
    return 0 if median < TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
