"""`scope demo` end to end on the bundled model and the shipped demo SAE (slow)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

SCOPE = [sys.executable, "-m", "scope.cli.main"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_demo_builds_a_complete_store_serves_it_and_reuses_it(tmp_path):
    out, port = tmp_path / "demo", free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    args = ["demo", "--out", str(out), "--tokens", "4096", "--ctx", "64", "--batch-size", "8"]
    proc = subprocess.Popen([*SCOPE, *args, "--no-browser", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, page = time.time() + 540, None
        while time.time() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                    page = r.read().decode()
                break
            except OSError:
                time.sleep(2)
        assert proc.poll() is None, proc.stdout.read()
        assert page is not None and "streamlit" in page.lower()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["tokens"] >= 4096
    assert manifest["saes"][0]["spec"] == "bundled"
    assert manifest["model"]["spec"] == "bundled"

    # a second run reuses the finished store: nothing is rewritten
    before = {p: p.stat().st_mtime_ns for p in Path(out).rglob("*") if p.is_file()}
    t = time.time()
    done = subprocess.run([*SCOPE, *args, "--no-dashboard"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert {p: p.stat().st_mtime_ns for p in Path(out).rglob("*") if p.is_file()} == before
    assert "status complete" in done.stdout
    assert time.time() - t < 120


def test_demo_corpus_mixes_prose_and_code_from_this_machine():
    """Fast: the demo corpus alternates prose (stdlib docstrings, packages' prose) and stdlib
    code, each piece read from the file its key names, within the budget, the same every time."""
    import inspect
    import sysconfig

    from scope.pipeline import demo_corpus as D

    docs = D.demo_documents(4096)
    assert docs == D.demo_documents(4096)  # deterministic
    kinds = ["prose" if d.key.startswith(("doc:", "site:")) else "code" for d in docs]
    assert kinds[:6] == ["prose", "code"] * 3
    total = sum(len(d.text) for d in docs)
    assert 4096 * D.CHARS_PER_TOKEN <= total < 4096 * D.CHARS_PER_TOKEN + D.MAX_DOC_CHARS
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for d in docs:
        assert 0 < len(d.text) <= D.MAX_DOC_CHARS
        if d.key.startswith("doc:"):  # every paragraph block is a docstring of that module
            source = (stdlib / d.key[4:]).read_text(encoding="utf-8")
            first = d.text.split("\n\n")[0]
            assert any(inspect.cleandoc(s).startswith(first) for s in source.split('"""')), d.key
        elif not d.key.startswith("site:"):
            assert (stdlib / d.key).read_text(encoding="utf-8").strip().startswith(d.text[:200])
    corpus = D.demo_corpus(4096)
    assert corpus.source == "demo" and corpus.describe()["n_texts"] == len(docs)


def test_docstrings_keep_sentences_and_drop_code_like_text():
    from scope.pipeline.demo_corpus import docstrings

    src = ('"""A module that reads files and writes them back, one line at a time."""\n'
           'def f():\n    """x = f(1, 2) -> [3]"""\n'
           'class C:\n    """The class keeps a count of every call it has seen so far."""\n')
    assert docstrings(src) == [
        "A module that reads files and writes them back, one line at a time.",
        "The class keeps a count of every call it has seen so far."]
    assert docstrings("def (") == []
