"""`scope explain` end to end against a local OpenAI-compatible server started by the test.

The server (a real HTTP server on 127.0.0.1) answers with computed replies: its explainer names
the tokens marked << >> in the prompt; its "perfect" judge looks each excerpt up among the
store's own kept contexts of the explained feature (ground truth independent of the scorer), its
"random" judge flips a seeded coin and logs what it said, so the test recomputes each balanced
accuracy itself. Negatives are re-encoded here with TransformerLens's own `run_with_cache` and
the JumpReLU formula written out, to check that they do not fire.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from explain_helpers import Oracle, build_sparse_store, serve  # noqa: E402

import scope  # noqa: E402
from scope.explore import explain as X  # noqa: E402
from scope.explore import sampling as Smp  # noqa: E402
from scope.explore import scoring as Sc  # noqa: E402
from scope.store import labels as L  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base_store(tmp_path_factory) -> Path:
    return build_sparse_store(tmp_path_factory.mktemp("explain"))


@pytest.fixture
def store_path(base_store, tmp_path) -> Path:
    dst = tmp_path / "store"
    shutil.copytree(base_store, dst)
    return dst


@pytest.fixture
def server():
    """A local OpenAI-compatible chat server; set `.oracle` before use."""
    state = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state["auth"] = self.headers.get("Authorization")
            assert self.path == "/v1/chat/completions"
            code, content = state["oracle"].answer(body)
            payload = json.dumps({"choices": [{"message": {"role": "assistant",
                                                           "content": content}}]}).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    httpd, url = serve(Handler)
    state["url"] = url + "/v1"
    try:
        yield state
    finally:
        state.get("oracle") and state["oracle"].release.set()
        httpd.shutdown()
        httpd.server_close()


def _live(store_path: Path, n: int, cfg: X.ExplainConfig | None = None) -> list[int]:
    """Features with enough kept contexts for the protocol."""
    cfg = cfg or X.ExplainConfig()
    store = scope.open_store(store_path)
    sae = store.sae_names[0]
    out = [int(i) for i in np.flatnonzero(store.firing_counts(sae) > 0)
           if len(Smp.positives_pool(store.feature(sae, int(i)))) >= cfg.scoring.min_examples]
    return out[:n]


def _independent_max_acts(store_path: Path, windows: list[int], feature: int) -> np.ndarray:
    """The feature's max activation in each window (positions 1:), computed with
    TransformerLens's run_with_cache and the JumpReLU formula, not scope's encoder."""
    import torch

    store = scope.open_store(store_path)
    sae_spec = store.sae_info(store.sae_names[0])["spec"]
    model = scope.load_model(store.manifest["model"]["spec"], device="cpu", dtype=torch.float32)
    sae = scope.load_sae(sae_spec, model=model)
    toks = torch.as_tensor(np.stack([store.window_tokens(int(w)) for w in windows]), dtype=torch.long)
    hook = sae.cfg.hook_name
    with torch.no_grad():
        _, cache = model.run_with_cache(toks, names_filter=hook)
        x = cache[hook].double()
        pre = x @ sae.W_enc[:, feature].double() + sae.b_enc[feature].double()
        f = pre * (pre > sae.threshold[feature].double())
    return f[:, 1:].amax(dim=1).numpy()


def test_perfect_judge_scores_one_on_verified_negatives(store_path, server):
    oracle = server["oracle"] = Oracle(store_path, "perfect")
    store = scope.open_store(store_path)
    sae = store.sae_names[0]
    feats = _live(store_path, 5)
    assert len(feats) == 5
    stats = X.explain_store(store, sae, X.ChatEndpoint(server["url"], "fake-7b", api_key="sk-t"),
                            features=feats, progress=False)
    assert stats["explained"] == 5 and stats["errors"] == {}
    assert server["auth"] == "Bearer sk-t"
    for i in feats:
        e = scope.open_store(store_path).feature(sae, i).explanation
        assert (e.explainer, e.prompt_version, e.source) == ("fake-7b", X.PROMPT_VERSION, "explain")
        c = e.counts
        assert e.score == 1.0 and e.fuzz_score == 1.0, (i, c)
        assert c["positives"] == len(c["positive_windows"]) >= 5
        assert c["negatives"] == len(c["negative_windows"]) >= 1
        assert not set(c["positive_windows"]) & set(c["explain_windows"])  # held out
        assert e.protocol["name"] == "delphi-detection" and e.protocol["negatives"] == "verified"
        assert e.protocol["per_prompt"] == 5 and e.protocol["n_quantiles"] == 10
        lo, hi = e.score_ci
        assert 0 < lo < 1 == hi
        acts = _independent_max_acts(store_path, c["negative_windows"], i)
        assert (acts <= 0).all(), (i, acts)  # verified: the feature never fires on them
        pos = _independent_max_acts(store_path, c["positive_windows"], i)
        assert (pos > 0).all()
    # every judge prompt: system, three demonstrations, then at most 5 examples
    judge_reqs = [r for r in oracle.requests if r["messages"][0]["content"] != X.EXPLAIN_SYSTEM]
    for r in judge_reqs:
        assert len(r["messages"]) == 8
        assert [m["role"] for m in r["messages"][1:7]] == ["user", "assistant"] * 3
        n = len(re.findall(r"^Example \d+: ", r["messages"][-1]["content"], flags=re.M))
        assert 1 <= n <= 5


def test_random_judge_scores_equal_an_independent_pooled_balanced_accuracy(store_path, server):
    oracle = server["oracle"] = Oracle(store_path, "random")
    store = scope.open_store(store_path)
    sae = store.sae_names[0]
    feats = _live(store_path, 12)
    stats = X.explain_store(store, sae, X.ChatEndpoint(server["url"], "m"), features=feats,
                            progress=False)
    assert stats["explained"] == len(feats)
    means = []
    for i in feats:
        e = scope.open_store(store_path).feature(sae, i).explanation
        for kind, got in (("detection", e.score), ("fuzz", e.fuzz_score)):
            pairs = oracle.log[(i, kind)]
            pos = [g for t, g in pairs if t == 1]
            neg = [g for t, g in pairs if t == 0]
            assert len(pos) == e.counts["positives"] and len(neg) == e.counts["negatives"]
            want = (sum(pos) / len(pos) + sum(1 - g for g in neg) / len(neg)) / 2
            assert got == round(want, 4), (i, kind)
            if kind == "detection":
                means.append(want)
                tp, tn = sum(pos), sum(1 - g for g in neg)
                a, b = (tp + 1) / (len(pos) + 2), (tn + 1) / (len(neg) + 2)
                half = 1.959964 * np.sqrt(a * (1 - a) / (len(pos) + 2)
                                          + b * (1 - b) / (len(neg) + 2)) / 2
                want_ci = (max(0, (a + b) / 2 - half), min(1, (a + b) / 2 + half))
                assert e.score_ci == pytest.approx(want_ci, abs=1e-4)
    assert stats["mean_score"] == pytest.approx(np.mean(means), abs=1e-3)
    assert 0.3 < stats["mean_score"] < 0.7


def test_min_examples_skips_with_a_reason_and_stores_nothing(store_path, server):
    server["oracle"] = Oracle(store_path)
    store = scope.open_store(store_path)
    sae = store.sae_names[0]
    feats = _live(store_path, 3)
    cfg = X.ExplainConfig(scoring=Smp.ScoringConfig(min_examples=1000))
    stats = X.explain_store(store, sae, X.ChatEndpoint(server["url"], "m"), features=feats,
                            cfg=cfg, progress=False)
    assert stats["explained"] == 0 and sorted(stats["skipped_reasons"]) == feats
    assert all("fewer than min_examples=1000" in r for r in stats["skipped_reasons"].values())
    assert not (store_path / L.LABELS_FILE).exists()


def test_hard_negatives_are_verified_too(store_path, server):
    server["oracle"] = Oracle(store_path)
    store = scope.open_store(store_path)
    sae = store.sae_names[0]
    feats = _live(store_path, 4)
    cfg = X.ExplainConfig(scoring=Smp.ScoringConfig(n_negatives=2, n_hard=4, fuzz=False))
    X.explain_store(store, sae, X.ChatEndpoint(server["url"], "m"), features=feats, cfg=cfg,
                    progress=False)
    hard = 0
    for i in feats:
        e = scope.open_store(store_path).feature(sae, i).explanation
        hard += e.counts["hard_negatives"]
        assert e.fuzz_score is None and e.protocol["n_hard"] == 4
        acts = _independent_max_acts(store_path, e.counts["negative_windows"], i)
        assert (acts <= 0).all()
    assert hard > 0


def test_malformed_answers_and_resume(store_path, server):
    assert X.parse_explanation("Explanation: **cats and dogs**\nmore") == "cats and dogs"
    assert X.parse_explanation("  \n ") is None
    assert Sc.parse_judgement("[1, 0, 1]", 3) == [1, 0, 1]
    assert Sc.parse_judgement("answer: [1,0]", 3) is None
    assert Sc.parse_judgement("[1, 2, 0]", 3) is None
    assert Sc.parse_judgement("[true, false]", 2) == [1, 0]
    assert Sc.balanced_accuracy([1, 1, 0, 0], [1, 0, 0, 0]) == 0.75
    oracle = server["oracle"] = Oracle(store_path, "perfect")
    store = scope.open_store(store_path)
    sae = store.sae_names[0]
    feats = _live(store_path, 6)
    model = X.ChatEndpoint(server["url"], "m")
    oracle.garbage = 1  # one nonsense answer: the retry recovers
    stats = X.explain_store(store, sae, model, features=feats[:1], progress=False)
    assert stats["explained"] == 1 and store.feature(sae, feats[0]).explanation.score == 1.0
    oracle.garbage = 2  # nonsense twice for the explainer: failed, nothing stored
    stats = X.explain_store(store, sae, model, features=feats[1:2], progress=False)
    assert (stats["explained"], stats["failed"]) == (0, 1)
    assert store.feature(sae, feats[1]).explanation is None
    n0 = len(oracle.requests)
    oracle.fail_after = n0 + 12  # the server breaks mid-run
    with pytest.raises(X.ExplainError, match="HTTP 500"):
        X.explain_store(store, sae, model, features=feats[2:], progress=False)
    done = L.Labels(store_path).for_sae(sae)
    oracle.fail_after = None
    stats = X.explain_store(store, sae, model, features=feats, progress=False)
    assert stats["skipped"] == len(done) and stats["explained"] == len(feats) - len(done)
    assert all(e.score == 1.0 for e in L.Labels(store_path).for_sae(sae).values())


def test_sigkill_after_n_answers_keeps_n(store_path, server):
    oracle = server["oracle"] = Oracle(store_path)
    feats = _live(store_path, 6)
    oracle.hang_on_explain = 4  # features 1-3 are fully answered, the 4th hangs
    script = (
        "import sys, scope\n"
        "from scope.explore import explain as X\n"
        f"s = scope.open_store({str(store_path)!r})\n"
        f"X.explain_store(s, s.sae_names[0], X.ChatEndpoint({server['url']!r}, 'm'), "
        f"features={feats!r}, progress=False)\n")
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        assert oracle.hanging.wait(300), "the run never reached the 4th feature"
        time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        oracle.release.set()
        if proc.poll() is None:
            proc.kill()
    done = L.Labels(store_path).for_sae(scope.open_store(store_path).sae_names[0])
    assert sorted(done) == feats[:3]
    assert all(e.score == 1.0 for e in done.values())
    assert not list(store_path.glob(".labels.json.*.tmp"))


def test_concurrent_runs_and_an_import_lose_nothing(store_path, server, tmp_path):
    from scope.explore.neuronpedia import import_explanations

    oracle = server["oracle"] = Oracle(store_path)
    store = scope.open_store(store_path)
    sae = store.sae_names[0]
    feats = _live(store_path, 8)
    imported_at = []
    rows = [{"modelId": "tiny-gemma3", "layer": "2-test-res-96", "index": str(i),
             "description": f"imported {i}"} for i in (90, 91)]
    (tmp_path / "np.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def during(n):  # an import lands while both explain runs are under way
        if n == 6 and not imported_at:
            imported_at.append(n)
            import_explanations(tmp_path / "np.jsonl", scope.open_store(store_path))

    oracle.on_request = during
    results = {}

    def run(name, part):
        results[name] = X.explain_store(scope.open_store(store_path), sae,
                                        X.ChatEndpoint(server["url"], "m"), features=part,
                                        progress=False)

    threads = [threading.Thread(target=run, args=(k, feats[k::2])) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert imported_at and results[0]["explained"] + results[1]["explained"] == len(feats)
    done = L.Labels(store_path).for_sae(sae)
    assert set(done) == set(feats) | {90, 91}
    assert done[90].text == "imported 90" and all(done[i].score == 1.0 for i in feats)


def test_unreachable_endpoint_is_a_named_error(store_path):
    store = scope.open_store(store_path)
    with pytest.raises(X.ExplainError, match="cannot reach a chat endpoint"):
        X.explain_store(store, store.sae_names[0], X.ChatEndpoint("http://127.0.0.1:9/v1", "m"),
                        features=_live(store_path, 1), progress=False)


def test_a_busy_lock_delays_saves_but_loses_no_answer(store_path, server):
    """Another live process holds the store's lock (an extraction, say) during most of the run:
    the answers are kept in memory and saved once the lock is free."""
    import socket

    oracle = server["oracle"] = Oracle(store_path)
    store = scope.open_store(store_path)
    sae = store.sae_names[0]
    feats = _live(store_path, 3)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    lock = store_path / ".scope.lock"
    lock.write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                "started": "now"}))
    n_requests = len(feats) * 5  # explain + detection + fuzz batches: well past two features

    def free(n):
        if n == n_requests:
            lock.unlink()

    oracle.on_request = free
    try:
        stats = X.explain_store(store, sae, X.ChatEndpoint(server["url"], "m"), features=feats,
                                progress=False, lock_wait=0.2)
    finally:
        holder.kill()
        holder.wait()
    assert stats["explained"] == 3
    assert sorted(L.Labels(store_path).for_sae(sae)) == feats


def test_explain_cli(store_path, server, capsys, monkeypatch):
    from scope.cli.main import main

    server["oracle"] = Oracle(store_path, "perfect")
    feats = _live(store_path, 2)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    rc = main(["explain", str(store_path), "--endpoint", server["url"], "--model", "fake-7b",
               "--features", ",".join(map(str, feats)), "--hard-negatives", "2"])
    out = capsys.readouterr().out
    assert rc == 0 and "explained 2" in out and "mean detection 1.000, fuzzing 1.000" in out
    assert server["auth"] == "Bearer sk-test"
    e = scope.open_store(store_path).feature(scope.open_store(store_path).sae_names[0],
                                             feats[0]).explanation
    assert e.protocol["n_hard"] == 2 and e.score == 1.0
