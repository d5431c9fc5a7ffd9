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
