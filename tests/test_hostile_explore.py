"""Hostile inputs to the explorer's writers and its HTTP client (issue 19, issue 21).

Rows in the style of tests/hostile.py: each builds its inputs in a fresh folder, calls the
library function the CLI calls (the CLI is being rewritten; these rows move to the command line
with it), and asserts the named error's class, a fragment of its message and its exit code, or
correct behaviour, and that nothing outside the allowed paths changed (the whole case folder is
snapshotted before and after). The HTTP rows run real servers on 127.0.0.1.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from explain_helpers import CHAT_OK, drip_body, drip_headers, handler, reply, serve  # noqa: E402
from hostile import outside, snapshot  # noqa: E402

import scope  # noqa: E402
from scope.errors import (  # noqa: E402
    ConfigError,
    EndpointAnswerError,
    EndpointConfigError,
    ExplanationImportError,
    ExportError,
    StoreCorruptError,
    StoreError,
)
from scope.explore.chat import ChatEndpoint  # noqa: E402
from scope.explore.neuronpedia import export_neuronpedia, import_explanations  # noqa: E402
from scope.store import labels as L  # noqa: E402


@dataclass
class Row:
    id: str
    call: Callable[[Path], Any]
    error: type | None
    fragment: str
    code: int | None = None
    setup: Callable[[Path], Any] | None = None
    writes: tuple[str, ...] = ()
    check: Callable[[Path, Any], None] | None = None


@pytest.fixture(scope="module")
def base_store(tmp_path_factory) -> Path:
    from explorer_helpers import build_store

    return build_store(tmp_path_factory.mktemp("hostile_explore"))


def run_row(row: Row, root: Path, base: Path) -> None:
    shutil.copytree(base, root / "store")
    if row.setup:
        row.setup(root)
    before = snapshot(root)
    result = exc = None
    try:
        result = row.call(root)
    except Exception as e:  # noqa: BLE001 - the verdict is checked below
        exc = e
    after = snapshot(root)
    stray = outside(before, after, row.writes)
    assert not stray, f"changed outside the allowed paths: {stray[:10]}"
    if row.error is None:
        assert exc is None, f"unexpected {type(exc).__name__}: {exc}"
    else:
        assert exc is not None, f"silent success: {result!r}"
        assert isinstance(exc, row.error), f"{type(exc).__name__}: {exc}"
        assert row.fragment in str(exc), str(exc)
        want = row.code if row.code is not None else 2
        assert exc.exit_code == want
    if row.check:
        row.check(root, result)


def _store(root: Path):
    return scope.open_store(root / "store")


def _row(index, text="x", layer="2-test-res-96", model="tiny-gemma3", **kw) -> dict:
    return {"modelId": model, "layer": layer, "index": index, "description": text, **kw}


def _lines(root: Path, name: str, rows, gz=False, raw: bytes | None = None) -> Path:
    data = raw if raw is not None else "".join(json.dumps(r) + "\n" for r in rows).encode()
    path = root / name
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def _import(name: str, **kw):
    return lambda root: import_explanations(root / name, _store(root), **kw)


def _no_labels(root: Path, _result) -> None:
    assert not (root / "store" / L.LABELS_FILE).exists()


IMPORT_ROWS = [
    Row("truncated-gzip", _import("batch-0.jsonl.gz"), ExplanationImportError,
        "truncated or corrupt gzip",
        setup=lambda r: (r / "batch-0.jsonl.gz").write_bytes(
            gzip.compress(b"".join(json.dumps(_row(str(i))).encode() + b"\n"
                                   for i in range(50)))[:-30]), check=_no_labels),
    Row("non-json-line", _import("b.jsonl"), ExplanationImportError, "b.jsonl, row 3: not JSON",
        setup=lambda r: _lines(r, "b.jsonl", [], raw=(json.dumps(_row("1")) + "\n"
                                                      + json.dumps(_row("2")) + "\n{oops\n"
                                                      ).encode()), check=_no_labels),
    Row("missing-field", _import("b.jsonl"), ExplanationImportError, "row 2: missing description",
        setup=lambda r: _lines(r, "b.jsonl", [_row("1"), {"modelId": "tiny-gemma3",
                                                          "layer": "2-test-res-96", "index": 2}]),
        check=_no_labels),
    Row("index-float", _import("b.jsonl"), ExplanationImportError,
        "row 1: index 3.7 is not an integer",
        setup=lambda r: _lines(r, "b.jsonl", [_row(3.7)]), check=_no_labels),
    Row("index-true", _import("b.jsonl"), ExplanationImportError, "index True is not an integer",
        setup=lambda r: _lines(r, "b.jsonl", [_row(True)]), check=_no_labels),
    Row("index-string-float", _import("b.json"), ExplanationImportError,
        "row 2: index '5.9' is not an integer",
        setup=lambda r: (r / "b.json").write_text(json.dumps([_row("1"), _row("5.9")])),
        check=_no_labels),
    Row("index-negative", _import("b.jsonl"), ExplanationImportError, "index '-3'",
        setup=lambda r: _lines(r, "b.jsonl", [_row("-3")]), check=_no_labels),
    Row("another-model", _import("b.jsonl.gz"), ExplanationImportError,
        "Is it an export for another model?",
        setup=lambda r: _lines(r, "b.jsonl.gz", [_row("1", model="gemma-2-2b",
                                                      layer="20-gemmascope-res-16k")], gz=True),
        check=_no_labels),
    Row("bad-row-in-second-file", lambda r: import_explanations(r / "np", _store(r)),
        ExplanationImportError, "batch-1.jsonl, row 1",
        setup=lambda r: ((r / "np").mkdir(), _lines(r, "np/batch-0.jsonl", [_row("1")]),
                         _lines(r, "np/batch-1.jsonl", [_row("x1")])), check=_no_labels),
    Row("dev-zero", lambda r: import_explanations("/dev/zero", _store(r)),
        ExplanationImportError, "is a device", check=_no_labels),
    Row("fifo", _import("pipe.jsonl"), ExplanationImportError, "is a FIFO",
        setup=lambda r: os.mkfifo(r / "pipe.jsonl"), check=_no_labels),
    Row("deep-json", _import("deep.json"), ExplanationImportError, "nested too deeply",
        setup=lambda r: (r / "deep.json").write_text("[" * 200_000 + "]" * 200_000),
        check=_no_labels),
    Row("non-utf8", _import("b.jsonl"), ExplanationImportError, "row 1: not UTF-8",
        setup=lambda r: _lines(r, "b.jsonl", [], raw=b'{"description": "\xff\xfe"}\n'),
        check=_no_labels),
    Row("missing-path", _import("nope.jsonl"), ExplanationImportError, "does not exist"),
    Row("glob-matches-nothing", lambda r: import_explanations(str(r / "zz-*.jsonl"), _store(r)),
        ExplanationImportError, "matches no file"),
    Row("labels-unknown-version", _import("b.jsonl"), StoreError, "labels format 7",
        setup=lambda r: (_lines(r, "b.jsonl", [_row("1")]),
                         (r / "store" / L.LABELS_FILE).write_text(
                             json.dumps({"format_version": 7, "saes": {}})))),
    Row("good-import", _import("b.jsonl.gz"), None, "", writes=("store/labels.json",),
        setup=lambda r: _lines(r, "b.jsonl.gz", [_row("1", "one"), _row("2", "two")], gz=True),
        check=lambda r, rep: rep.imported == {_store(r).sae_names[0]: 2} or pytest.fail(rep)),
]


def _export(out: Callable[[Path], Path], **kw):
    return lambda root: export_neuronpedia(_store(root), out(root), logit_histograms=False,
                                           progress=False, **kw)


def _nan_store(root: Path) -> None:
    from safetensors.numpy import load_file, save_file

    m = json.loads((root / "store" / "manifest.json").read_text())
    f = root / "store" / m["data"] / "saes" / m["saes"][0]["dir"] / "summary.safetensors"
    arrays = load_file(f)
    arrays["max_activation"][3] = float("inf")
    save_file(arrays, f)


def _partial(root: Path) -> None:
    p = root / "store" / "manifest.json"
    m = json.loads(p.read_text())
    m["status"] = "partial"
    p.write_text(json.dumps(m))


EXPORT_ROWS = [
    Row("out-is-store", _export(lambda r: r / "store"), ExportError, "inside the store"),
    Row("out-inside-store", _export(lambda r: r / "store" / "np"), ExportError,
        "inside the store"),
    Row("out-is-a-file", _export(lambda r: r / "f.txt"), ExportError, "is a file",
        setup=lambda r: (r / "f.txt").write_text("mine")),
    Row("foreign-folder", _export(lambda r: r / "out"), ExportError, "not written by",
        setup=lambda r: (r / "out" / "tiny-gemma3_test-res-96_blocks.2.hook_resid_post_96"
                         ).mkdir(parents=True)),
    # the store's reader refuses the non-finite value before the export reads it
    Row("non-finite-max", _export(lambda r: r / "out"), StoreCorruptError,
        "NaN or infinite value in `max_activation`", setup=_nan_store),
    Row("partial-store", _export(lambda r: r / "out"), ExportError, "partial", setup=_partial),
    Row("upload-over-limit", _export(lambda r: r / "out", format="upload", batch_size=500),
        ExportError, "1-128"),
    Row("unknown-sae", _export(lambda r: r / "out", sae="nope"), StoreError, "nope"),
    Row("good-export", _export(lambda r: r / "out", batch_size=50), None, "", writes=("out",)),
]


@pytest.mark.parametrize("row", IMPORT_ROWS + EXPORT_ROWS, ids=lambda r: r.id)
def test_hostile_files(row, base_store, tmp_path):
    run_row(row, tmp_path, base_store)


# ---------------------------------------------------------------------------------------------
# HTTP: servers that misbehave
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def http():
    servers = []

    def start(behaviour):
        seen: list = []
        httpd, url = serve(handler(behaviour, seen))
        servers.append(httpd)
        return url, seen

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def _ask(url, **kw):
    return ChatEndpoint(url + "/v1", "m", api_key="sk-secret", **kw).complete(
        [{"role": "user", "content": "hi"}])


def test_cross_origin_redirect_never_carries_the_key(http):
    other_url, other_seen = http(reply(CHAT_OK))
    url, seen = http(reply(b"", code=307, location=other_url + "/v1/chat/completions"))
    with pytest.raises(EndpointAnswerError, match="redirected .*never sends the key"):
        _ask(url)
    assert seen == [("/v1/chat/completions", "Bearer sk-secret")]
    assert other_seen == []  # the other origin got nothing, let alone the key


def test_same_origin_redirects(http):
    box = {}

    def behaviour(h):
        if h.path == "/v1/chat/completions":
            reply(b"", code=box["code"], location=box["url"] + "/v2/chat/completions")(h)
        else:
            reply(CHAT_OK)(h)

    url, seen = http(behaviour)
    box["url"], box["code"] = url, 307
    assert _ask(url) == "Explanation: ok"
    assert seen[-1] == ("/v2/chat/completions", "Bearer sk-secret")
    box["code"] = 302  # a POST turned into a GET elsewhere: refused, not guessed
    with pytest.raises(EndpointAnswerError, match="HTTP 302"):
        _ask(url)


@pytest.mark.parametrize("name, behaviour, fragment", [
    ("html", reply(b"<!DOCTYPE html><html>Sign in</html>", "text/html"), "answered HTML"),
    ("html-as-json", reply(b"<html>proxy error</html>"), "answered HTML"),
    ("non-utf8", reply(b'{"choices": "\xff\xfe\xfd"}'), "not UTF-8"),
    ("non-json", reply(b"hello there"), "not JSON"),
    ("wrong-shape", reply(b'{"result": "Explanation: x"}'), "chat-completions format"),
    ("content-not-text", reply(b'{"choices": [{"message": {"content": [1]}}]}'), "not text"),
    ("oversized", reply(b"[" + b"1," * 3_000_000 + b"1]"), "more than"),
    ("deep-json", reply(b"[" * 100_000 + b"]" * 100_000), "not JSON"),
    ("drip-body", drip_body, "did not finish answering within"),
    ("drip-headers", drip_headers, "did not finish answering within"),
])
def test_bad_answers_are_named_errors(http, name, behaviour, fragment):
    url, _ = http(behaviour)
    t0 = time.monotonic()
    with pytest.raises(EndpointAnswerError, match=fragment) as info:
        _ask(url, timeout=1.5)
    assert time.monotonic() - t0 < 6, name
    assert info.value.exit_code == 1


@pytest.mark.parametrize("endpoint, fragment", [
    ("http://127.0.0.1:8000/v1\r\nX-Injected: 1", "control characters"),
    ("http://127.0.0.1:8000/v1 x", "control characters"),
    ("ftp://127.0.0.1/v1", "not an http\\(s\\) URL"),
    ("http:///v1", "not an http\\(s\\) URL"),
    ("http://user:pw@127.0.0.1:8000/v1", "credentials in the URL"),
    ("http://127.0.0.1:8000/v1?next=http://evil", "without \\?query"),
])
def test_endpoint_is_validated_before_any_request(endpoint, fragment):
    with pytest.raises(EndpointConfigError, match=fragment) as info:
        ChatEndpoint(endpoint, "m")
    assert info.value.exit_code == 2


def test_explain_reports_bad_answers_per_feature_and_keeps_the_rest(http, base_store, tmp_path):
    from scope.explore import explain as X
    from scope.explore.sampling import ScoringConfig

    shutil.copytree(base_store, tmp_path / "store")
    store = _store(tmp_path)
    sae = store.sae_names[0]
    state = {"n": 0}

    def behaviour(h):
        state["n"] += 1
        if state["n"] == 1:  # the first feature's explanation request gets a login page
            return reply(b"<html>login</html>", "text/html")(h)
        reply(json.dumps({"choices": [{"message": {"content": "Explanation: words"}}]}
                          ).encode())(h)

    url, _ = http(behaviour)
    cfg = X.ExplainConfig(scoring=ScoringConfig(verify=False, fuzz=False))
    stats = X.explain_store(store, sae, ChatEndpoint(url + "/v1", "m"), features=[0, 1, 2],
                            cfg=cfg, progress=False)
    assert sorted(stats["errors"]) == [0] and "answered HTML" in stats["errors"][0]
    assert stats["explained"] == 2
    done = L.Labels(tmp_path / "store").for_sae(sae)
    assert sorted(done) == [1, 2] and done[1].protocol["negatives"] == "unverified"
    state["n"] = -100  # now every answer is HTML: the run stops after 3 features in a row
    url2, _ = http(reply(b"<html>down</html>", "text/html"))
    with pytest.raises(EndpointAnswerError, match="stopping"):
        X.explain_store(store, sae, ChatEndpoint(url2 + "/v1", "m2"), features=[3, 4, 5, 6],
                        cfg=cfg, progress=False)


@pytest.mark.parametrize("features, error, fragment", [
    ([], ConfigError, "feature list is empty"),
    ([10_000_000_000], StoreError, "out of range"),
    ([3.7], ConfigError, "not an integer"),
    ([True], ConfigError, "not an integer"),
])
def test_explain_feature_lists(base_store, tmp_path, features, error, fragment):
    from scope.explore import explain as X

    shutil.copytree(base_store, tmp_path / "store")
    store = _store(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(error, match=fragment):
        X.explain_store(store, store.sae_names[0], ChatEndpoint("http://127.0.0.1:9/v1", "m"),
                        features=features, progress=False)
    assert snapshot(tmp_path) == before


def test_import_of_a_fifo_does_not_hang(base_store, tmp_path):
    """The FIFO row again, with a writer that never comes: refused at once, not blocked."""
    shutil.copytree(base_store, tmp_path / "store")
    os.mkfifo(tmp_path / "p.jsonl")
    done = threading.Event()
    box = {}

    def go():
        try:
            import_explanations(tmp_path / "p.jsonl", _store(tmp_path))
        except ExplanationImportError as exc:
            box["exc"] = exc
        done.set()

    threading.Thread(target=go, daemon=True).start()
    assert done.wait(20), "import blocked on a FIFO"
    assert "FIFO" in str(box["exc"])


# ---------------------------------------------------------------------------------------------
# the same through the command line (tests/hostile.py's harness)
# ---------------------------------------------------------------------------------------------


def _copy_store(base: Path):
    return lambda root: shutil.copytree(base, root / "store")


def _cli_cases(base: Path):
    from hostile import Case

    def with_store(extra=None):
        def setup(root):
            _copy_store(base)(root)
            if extra:
                extra(root)
        return setup

    return [
        Case("cli-import-truncated-gzip", lambda r: ["labels", "import", str(r / "b.jsonl.gz"),
                                                     str(r / "store")],
             ExplanationImportError, "truncated or corrupt gzip",
             setup=with_store(lambda r: (r / "b.jsonl.gz").write_bytes(
                 gzip.compress(json.dumps(_row("1")).encode() * 20)[:-12]))),
        Case("cli-import-index-float", lambda r: ["labels", "import", str(r / "b.jsonl"),
                                                  str(r / "store")],
             ExplanationImportError, "row 1: index 3.7",
             setup=with_store(lambda r: _lines(r, "b.jsonl", [_row(3.7)]))),
        Case("cli-import-jsonl-gz", lambda r: ["labels", "import", str(r / "b.jsonl.gz"),
                                               str(r / "store"), "--replace-scored"],
             None, "imported 2 explanations", writes=("store/labels.json",),
             setup=with_store(lambda r: _lines(r, "b.jsonl.gz", [_row("1"), _row("2")],
                                               gz=True))),
        Case("cli-endpoint-crlf", lambda r: ["explain", str(r / "store"), "--endpoint",
                                             "http://127.0.0.1:9/v1\r\nX: 1", "--model", "m"],
             EndpointConfigError, "control characters", setup=with_store()),
        Case("cli-export-inside-store", lambda r: ["export", "neuronpedia", str(r / "store"),
                                                   "--out", str(r / "store" / "np")],
             ExportError, "inside the store", setup=with_store()),
        Case("cli-export-upload", lambda r: ["export", "neuronpedia", str(r / "store"), "--out",
                                             str(r / "up"), "--format", "upload",
                                             "--no-logit-histograms"],
             None, "wrote 1 upload files", writes=("up",), setup=with_store()),
    ]


def test_hostile_cli(base_store, tmp_path, capsys, monkeypatch):
    from hostile import run_case

    for case in _cli_cases(base_store):
        run_case(case, tmp_path / case.id, capsys, monkeypatch)
