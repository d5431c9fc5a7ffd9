"""`scope explain` end to end against a local OpenAI-compatible server started by the test.

The server answers with computed (not canned) replies: its explainer names the tokens marked
<< >> in the prompt; its "perfect" judge looks each excerpt up in the store's own activating
contexts of the explained feature (ground truth independent of the scorer), its "random" judge
flips a seeded coin. Balanced accuracy must then be 1.0 and ~0.5.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scope  # noqa: E402
from scope.explore import explain as X  # noqa: E402
from scope.store import labels as L  # noqa: E402


@pytest.fixture(scope="module")
def base_store(tmp_path_factory) -> Path:
    from explorer_helpers import build_store

    return build_store(tmp_path_factory.mktemp("explain"))


@pytest.fixture
def store_path(base_store, tmp_path) -> Path:
    dst = tmp_path / "store"
    shutil.copytree(base_store, dst)
    return dst


class Oracle:
    """The fake model's brain: explains from marks, judges from the store's ground truth."""

    def __init__(self, store_path: Path, judge: str = "perfect") -> None:
        store = scope.open_store(store_path)
        sae = store.sae_names[0]
        self.judge, self.rng = judge, random.Random(0)
        self.marked: dict[str, int] = {}  # marked context text -> feature
        self.active: dict[int, set[str]] = {}  # feature -> its activating contexts (unmarked)
        for i in np.flatnonzero(store.firing_counts(sae) > 0):
            f = store.feature(sae, int(i))
            ex = list(f.top_examples) + [e for b in f.band_examples for e in b.examples]
            self.active[int(i)] = {X.context_text(e, marked=False) for e in ex}
            for e in ex:
                self.marked.setdefault(X.context_text(e, marked=True), int(i))
        self.explained: dict[str, int] = {}  # explanation -> feature
        self.requests: list[dict] = []
        self.garbage = 0  # answer this many requests with nonsense first
        self.fail_after: int | None = None  # HTTP 500 once this many requests were answered

    def answer(self, body: dict) -> tuple[int, str]:
        self.requests.append(body)
        if self.fail_after is not None and len(self.requests) > self.fail_after:
            return 500, ""
        if self.garbage > 0:
            self.garbage -= 1
            return 200, "  \n "  # no explanation, no list
        system, user = body["messages"][0]["content"], body["messages"][1]["content"]
        lines = re.findall(r"^\d+\. (.*)$", user, flags=re.M)
        if system == X.EXPLAIN_SYSTEM:
            feats = Counter(self.marked[t] for t in lines if t in self.marked)
            marks = Counter(m for t in lines for m in re.findall(r"<<(.*?)>>", t))
            text = f"the tokens {', '.join(repr(m) for m, _ in marks.most_common(3))}"
            if feats:
                text += f" (#{len(self.explained)})"  # unique per explained feature
                self.explained[text] = feats.most_common(1)[0][0]
            return 200, f"Explanation: {text}"
        explanation = re.search(r"^Explanation: (.*)$", user, flags=re.M).group(1)
        if self.judge == "perfect":
            truth = self.active[self.explained[explanation]]
            guess = [int(t in truth) for t in lines]
        else:
            guess = [self.rng.randint(0, 1) for _ in lines]
        return 200, f"Sure. {json.dumps(guess)}"


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

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


def _live(store_path: Path, n: int) -> list[int]:
    store = scope.open_store(store_path)
    counts = store.firing_counts(store.sae_names[0])
    return [int(i) for i in np.flatnonzero(counts >= 4)][:n]


def test_perfect_judge_scores_one_and_results_are_stored(store_path, server, monkeypatch):
    from scope.cli.main import main

    server["oracle"] = Oracle(store_path, "perfect")
    feats = _live(store_path, 8)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    rc = main(["explain", str(store_path), "--endpoint", server["url"], "--model", "fake-7b",
               "--features", ",".join(map(str, feats))])
    assert rc == 0
    assert server["auth"] == "Bearer sk-test"
    store = scope.open_store(store_path)
    sae = store.sae_names[0]
    for i in feats:
        e = store.feature(sae, i).explanation
        assert e is not None and e.explainer == "fake-7b"
        assert e.score == 1.0, (i, e)
        assert L.labels_for(store_path).get(sae, i).prompt_version == X.PROMPT_VERSION
        assert store.feature(sae, i).label == e.text


def test_random_judge_scores_about_half(store_path, server):
    server["oracle"] = Oracle(store_path, "random")
    store = scope.open_store(store_path)
    sae = store.sae_names[0]
    feats = _live(store_path, 40)
    judge = X.ChatEndpoint(server["url"], "fake-judge")
    stats = X.explain_store(store, sae, X.ChatEndpoint(server["url"], "fake-7b"), judge,
                            features=feats, progress=False)
    assert stats["explained"] == len(feats)
    assert 0.38 < stats["mean_score"] < 0.62, stats


def test_prompts_mark_firing_tokens_and_scoring_hides_them(store_path, server):
    oracle = server["oracle"] = Oracle(store_path, "perfect")
    store = scope.open_store(store_path)
    sae = store.sae_names[0]
    i = _live(store_path, 1)[0]
    cfg = X.ExplainConfig(n_explain=6, n_score=3)
    X.explain_store(store, sae, X.ChatEndpoint(server["url"], "m"), features=[i], cfg=cfg,
                    progress=False)
    explain_req, score_req = oracle.requests
    assert explain_req["model"] == "m" and explain_req["temperature"] == 0.0
    user = explain_req["messages"][1]["content"]
    feat = store.feature(sae, i)
    first = feat.top_examples[0]
    # the first excerpt is the top context, cropped around its peak, firing tokens marked
    p = first.max_position
    lo, hi = max(0, p - 24), min(len(first.tokens), p + 9)
    want = "".join(f"<<{t}>>" if a > 0 else t for t, a in
                   zip(first.tokens[lo:hi], first.activations[lo:hi], strict=True))
    assert f"1. {want.replace(chr(10), '↵').strip()}" in user
    assert user.count("<<") == sum(
        sum(a > 0 for a in e.activations[max(0, e.max_position - 24):e.max_position + 9])
        for e in X._split_examples(feat, cfg)[0])
    scoring = score_req["messages"][1]["content"]
    assert "<<" not in scoring.split("Excerpts:")[1]
    items = re.findall(r"^\d+\. ", scoring, flags=re.M)
    held = X._split_examples(feat, cfg)[1]
    assert len(items) == 2 * len(held)  # as many non-activating excerpts as activating ones


def test_malformed_answers(store_path, server):
    assert X.parse_explanation("Explanation: **cats and dogs**\nmore") == "cats and dogs"
    assert X.parse_explanation("  \n ") is None
    assert X.parse_explanation("names of cities") == "names of cities"
    assert X.parse_judgement("[1, 0, 1]", 3) == [1, 0, 1]
    assert X.parse_judgement("answer: [1,0]", 3) is None
    assert X.parse_judgement("[1, 2, 0]", 3) is None
    assert X.parse_judgement("no list", 1) is None
    assert X.balanced_accuracy([1, 1, 0, 0], [1, 0, 0, 0]) == 0.75
    oracle = server["oracle"] = Oracle(store_path, "perfect")
    store = scope.open_store(store_path)
    sae = store.sae_names[0]
    feats = _live(store_path, 2)
    oracle.garbage = 1  # one nonsense answer: the retry recovers
    stats = X.explain_store(store, sae, X.ChatEndpoint(server["url"], "m"), features=feats[:1],
                            progress=False)
    assert stats["explained"] == 1 and store.feature(sae, feats[0]).explanation.score == 1.0
    oracle.garbage = 100  # nonsense throughout: counted as failed, nothing stored
    stats = X.explain_store(store, sae, X.ChatEndpoint(server["url"], "m"), features=feats[1:],
                            progress=False)
    assert stats == {"explained": 0, "skipped": 0, "failed": 1, "mean_score": None}
    assert store.feature(sae, feats[1]).explanation is None


def test_resume_after_interruption(store_path, server):
    oracle = server["oracle"] = Oracle(store_path, "perfect")
    store = scope.open_store(store_path)
    sae = store.sae_names[0]
    feats = _live(store_path, 6)
    model = X.ChatEndpoint(server["url"], "m")
    oracle.fail_after = 2 * 3  # explain+score for 3 features, then the server breaks
    with pytest.raises(X.ExplainError, match="HTTP 500"):
        X.explain_store(store, sae, model, features=feats, progress=False, save_every=100)
    done = L.Labels(store_path).for_sae(sae)
    assert sorted(done) == feats[:3]  # what was finished before the failure was saved
    oracle.fail_after, n_before = None, len(oracle.requests)
    stats = X.explain_store(store, sae, model, features=feats, progress=False)
    assert stats["skipped"] == 3 and stats["explained"] == 3
    assert len(oracle.requests) - n_before == 2 * 3  # only the remaining features were asked
    assert all(e.score == 1.0 for e in L.Labels(store_path).for_sae(sae).values())


def test_unreachable_endpoint_is_a_named_error(store_path):
    from scope.cli.main import main

    rc = main(["explain", str(store_path), "--endpoint", "http://127.0.0.1:9/v1", "--model", "m",
               "--limit", "1"])
    assert rc == 2
