"""Hostile and corrupt feature stores through the CLI: a manifest pointing outside its folder,
broken manifests and data files, a different store in --out, two runs on one --out. Each is a
named StoreError and nothing is written outside the target (see tests/hostile.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hostile import REPO, Case, params, run_case
from test_hostile_cli import _extract, _files, _steer

from scope.errors import StoreCorruptError, StoreError, StoreOutsideError


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    from scope.cli.main import main

    root = tmp_path_factory.mktemp("hostile_store")
    _files(root)
    assert main(_extract()(root)) == 0
    return root


_SRC: list[Path] = []


def _store(edit=None, name: str = "store"):
    """Copy the module's store (and its SAE) into the case folder, then `edit(store_path)`."""
    def setup(root: Path) -> None:
        _files(root)
        shutil.copytree(_SRC[0] / "out", root / name)
        if edit:
            edit(root / name)
    return setup


def _manifest(change):
    def edit(store: Path) -> None:
        m = json.loads((store / "manifest.json").read_text())
        change(m)
        (store / "manifest.json").write_text(json.dumps(m))
    return edit


def _set(path: str, value):
    def change(m):
        if path == "dir":
            m["saes"][0]["dir"] = value
        else:
            m[path] = value
    return change


def _write(rel: str, data: bytes):
    def edit(store: Path) -> None:
        p = store / rel
        p.write_bytes(data)
    return edit


def _truncate_summary(store: Path) -> None:
    p = next(store.rglob("summary.safetensors"))
    p.write_bytes(p.read_bytes()[:50])


def _garbage_summary(store: Path) -> None:
    p = next(store.rglob("summary.safetensors"))
    p.write_bytes(b"\xff" * 200)


def _relative(root: Path) -> list[str]:
    return _steer("--relative", "{root}/store", "--sae", str(_SRC[0] / "sae"))(root)


def _merge(root: Path) -> list[str]:
    return ["merge", str(root / "store"), "--out", str(root / "merged")]


def _extract_into_store(root: Path) -> list[str]:
    return _extract("--out", "{root}/store", "--top-k", "3")(root)


def _not_there(*names):
    def check(root: Path) -> None:
        for n in names:
            assert not (root / n).exists(), n
        assert not (root.parent / "X").exists()
    return check


ROWS = [
    Case("merge-sae-dir-traversal", _merge, StoreOutsideError, "saes[].dir = '../../../../X'",
         setup=_store(_manifest(_set("dir", "../../../../X"))), check=_not_there("merged")),
    Case("merge-data-traversal", _merge, StoreOutsideError, "data = '../../X'",
         setup=_store(_manifest(_set("data", "../../X"))), check=_not_there("merged")),
    Case("merge-absolute-data", _merge, StoreOutsideError, "data = '/etc'",
         setup=_store(_manifest(_set("data", "/etc"))), check=_not_there("merged")),
    Case("relative-store-dir-traversal", _relative, StoreOutsideError, "is not a plain folder",
         setup=_store(_manifest(_set("dir", "../../../../X")))),
    Case("extract-resume-into-traversal", _extract_into_store, StoreOutsideError,
         "refusing a store that points outside", setup=_store(_manifest(_set("data", "..")))),
    Case("manifest-not-json", _relative, StoreError, "manifest",
         setup=_store(_write("manifest.json", b"{not json"))),
    Case("manifest-is-a-list", _relative, StoreError, "manifest",
         setup=_store(_write("manifest.json", b"[1, 2]"))),
    Case("manifest-missing", _relative, StoreError, "store",
         setup=_store(lambda s: (s / "manifest.json").unlink())),
    Case("manifest-from-the-future", _relative, StoreError, "upgrade scope",
         setup=_store(_manifest(_set("format_version", 99)))),
    Case("merge-of-a-non-store", lambda r: ["merge", str(r / "sae"), "--out", str(r / "merged")],
         StoreError, "sae", setup=_store(), check=_not_there("merged")),
    Case("extract-over-a-different-store", _extract_into_store, StoreError,
         "different configuration", setup=_store()),
    Case("summary-truncated", _relative, StoreCorruptError, "summary.safetensors is unreadable",
         setup=_store(_truncate_summary)),
    Case("summary-garbage", _relative, StoreCorruptError, "the store is corrupt",
         setup=_store(_garbage_summary)),
]


@pytest.mark.parametrize("case", params(ROWS))
def test_hostile_store(case: Case, store, tmp_path, capsys, monkeypatch):
    _SRC[:] = [store]
    monkeypatch.setenv("SCOPE_CACHE", str(tmp_path / "scope_cache"))
    run_case(case, tmp_path / "case", capsys, monkeypatch)


@pytest.mark.slow
def test_second_run_on_the_same_out_is_refused(store, tmp_path):
    """While one `scope extract` writes --out, a second one on the same --out is refused."""
    _files(tmp_path)
    args = _extract("--tokens", "40000", "--checkpoint-every", "0")(tmp_path)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    (tmp_path / "doc.txt").write_text((tmp_path / "doc.txt").read_text() * 60)
    first = subprocess.Popen([sys.executable, "-m", "scope.cli.main", *args], cwd=tmp_path, env=env,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (tmp_path / "out" / "manifest.json").is_file():
            time.sleep(0.2)
        second = subprocess.run([sys.executable, "-m", "scope.cli.main", *args], cwd=tmp_path,
                                env=env, capture_output=True, text=True, timeout=600)
    finally:
        first.terminate()
        first.wait(timeout=120)
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert "is being written by another run (pid" in second.stderr, second.stderr[-2000:]
