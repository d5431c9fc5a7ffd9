"""Helpers of the explain tests: a sparse tiny store, a local chat server and its oracle.

The server (a real HTTP server on 127.0.0.1) answers with computed replies: its explainer names
the tokens marked << >> in the prompt; its "perfect" judge looks each excerpt up among the
store's own kept contexts of the explained feature (ground truth independent of the scorer), its
"random" judge flips a seeded coin and logs what it said.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

import scope
from scope.explore import explain as X
from scope.explore import scoring as Sc


def build_sparse_store(root: Path) -> Path:
    """explorer_helpers' tiny store, but each feature's threshold at a quantile (93-99.5%) of
    its pre-activations on the corpus, so features are sparse (0.3-9% of tokens) and most
    windows hold verified negatives (with random thresholds every feature fires everywhere)."""
    import logging

    import torch
    from builders import TINY_TEXT, tiny_gemma3_dir
    from explorer_helpers import D_SAE, HOOK, NEURONPEDIA_ID
    from sae_builders import jumprelu_weights

    from scope.model.activations import capture, to_tokens
    from scope.pipeline.corpus import Corpus
    from scope.saes.sae import JumpReLUSAE, SAEConfig

    model = scope.load_model(str(tiny_gemma3_dir(root / "model")), device="cpu",
                             dtype=torch.float32)
    w = jumprelu_weights(model.cfg.d_model, D_SAE, seed=3)
    texts = [t for t in Path(logging.__file__).read_text().split("\n\n") if t.strip()][:80]
    x = capture(model, to_tokens(model, texts[:40], max_len=32), [HOOK])[HOOK]
    pre = x.reshape(-1, model.cfg.d_model).numpy() @ w["W_enc"] + w["b_enc"]
    q = np.random.default_rng(0).uniform(0.93, 0.995, D_SAE)
    w["threshold"] = np.array([np.quantile(pre[:, f], q[f]) for f in range(D_SAE)],
                              np.float32).clip(1e-3)
    w["threshold"][-4:] = 1e6  # dead features
    cfg = SAEConfig(d_in=model.cfg.d_model, d_sae=D_SAE, hook_name=HOOK,
                    neuronpedia_id=NEURONPEDIA_ID)
    JumpReLUSAE(cfg, **{k: torch.tensor(v) for k, v in w.items()}).save(root / "sae")
    sae = scope.load_sae(str(root / "sae"), model=model)
    scope.extract(model, [sae], Corpus(texts=texts + list(TINY_TEXT)), str(root / "store"),
                  tokens=3072, ctx=32, batch_size=8, progress=False,
                  sae_specs=[str(root / "sae")])
    return root / "store"


class Oracle:
    """The fake model's brain: explains from marks, judges from the store's ground truth."""

    def __init__(self, store_path: Path, judge: str = "perfect") -> None:
        store = scope.open_store(store_path)
        sae = store.sae_names[0]
        self.judge, self.rng = judge, random.Random(0)
        self.lock = threading.Lock()
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
        self.log: dict[tuple[int, str], list[tuple[int, int]]] = defaultdict(list)
        self.garbage = 0  # answer this many requests with nonsense first
        self.fail_after: int | None = None  # HTTP 500 once this many requests were answered
        self.on_request = None  # called with the request number before answering
        self.hang_on_explain: int | None = None  # block the n-th explain request
        self.hanging = threading.Event()
        self.release = threading.Event()
        self.explain_requests = 0

    def answer(self, body: dict) -> tuple[int, str]:
        with self.lock:
            self.requests.append(body)
            n = len(self.requests)
        if self.on_request is not None:
            self.on_request(n)
        if self.fail_after is not None and n > self.fail_after:
            return 500, ""
        if self.garbage > 0:
            self.garbage -= 1
            return 200, "  \n "  # no explanation, no list
        system, user = body["messages"][0]["content"], body["messages"][-1]["content"]
        if system == X.EXPLAIN_SYSTEM:
            with self.lock:
                self.explain_requests += 1
                k = self.explain_requests
            if self.hang_on_explain is not None and k >= self.hang_on_explain:
                self.hanging.set()
                self.release.wait(60)
                return 500, ""
            lines = re.findall(r"^\d+\. (.*)$", user, flags=re.M)
            feats = Counter(self.marked[t] for t in lines if t in self.marked)
            marks = Counter(m for t in lines for m in re.findall(r"<<(.*?)>>", t))
            text = f"the tokens {', '.join(repr(m) for m, _ in marks.most_common(3))}"
            with self.lock:
                text += f" (#{len(self.explained)})"  # unique per explained feature
                self.explained[text] = feats.most_common(1)[0][0]
            return 200, f"Explanation: {text}"
        kind = "detection" if system == Sc.DETECTION_SYSTEM else "fuzz"
        assert system in (Sc.DETECTION_SYSTEM, Sc.FUZZ_SYSTEM)
        explanation = re.search(r"^Feature explanation: (.*)$", user, flags=re.M).group(1)
        feature = self.explained[explanation]
        lines = re.findall(r"^Example \d+: (.*)$", user, flags=re.M)
        truth = [int(t.replace("<<", "").replace(">>", "") in self.active[feature])
                 for t in lines]
        with self.lock:
            guess = truth if self.judge == "perfect" else [self.rng.randint(0, 1) for _ in lines]
            self.log[(feature, kind)] += list(zip(truth, guess, strict=True))
        return 200, f"Sure. {json.dumps(guess)}"


def serve(handler_cls) -> tuple[ThreadingHTTPServer, str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_cls)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


# misbehaving servers of the hostile rows

CHAT_OK = json.dumps({"choices": [{"message": {"content": "Explanation: ok"}}]}).encode()


def handler(behaviour: Callable, seen: list):
    class H(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append((self.path, self.headers.get("Authorization")))
            behaviour(self)

        def log_message(self, *args):
            pass

    return H


def reply(body: bytes, ctype: str = "application/json", code: int = 200, **headers):
    def go(h):
        h.send_response(code)
        h.send_header("Content-Type", ctype)
        for k, v in headers.items():
            h.send_header(k.replace("_", "-"), v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)
    return go


def drip_body(h):
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", "100000")
    h.end_headers()
    for _ in range(40):
        try:
            h.wfile.write(b" ")
            h.wfile.flush()
        except OSError:
            return
        time.sleep(0.25)


def drip_headers(h):
    for ch in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 40:
        try:
            h.wfile.write(bytes([ch]))
            h.wfile.flush()
        except OSError:
            return
        time.sleep(0.25)
