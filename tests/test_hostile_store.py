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
from extract_helpers import cli_extract as _extract
from extract_helpers import cli_files as _files
from extract_helpers import cli_steer as _steer
from extract_helpers import cli_store as _cli_store
from hostile import REPO, Case, params, run_case

from scope.errors import StoreCorruptError, StoreError, StoreOutsideError
from scope.store import read_manifest


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return _cli_store(tmp_path_factory.mktemp("hostile_store"))


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


def _merge_into(name: str):
    return lambda root: ["merge", str(root / "store"), "--out", str(root / name)]


def _linked_sae_folder(store: Path) -> None:
    """The SAE folder of the current generation is a link into another store's."""
    other = store.parent / "other_store"
    shutil.copytree(store, other)
    m = json.loads((store / "manifest.json").read_text())
    folder = store / m["data"] / "saes" / m["saes"][0]["dir"]
    shutil.rmtree(folder)
    folder.symlink_to(other / m["data"] / "saes" / m["saes"][0]["dir"], target_is_directory=True)


def _extract_into_store(root: Path) -> list[str]:
    return _extract("--out", "{root}/store", "--top-k", "3")(root)


def _not_there(*names):
    def check(root: Path) -> None:
        for n in names:
            assert not (root / n).exists(), n
        assert not (root.parent / "X").exists()
    return check


def _users_files(store: Path) -> None:
    """Files a user keeps in a store folder: none of them is the store's."""
    (store / "notes.txt").write_text("my notes")
    (store / "gen-analysis.md").write_text("# my analysis")
    (store / "tables_mine").mkdir()
    (store / "tables_mine" / "t.csv").write_text("1,2")


def _users_files_kept(root: Path) -> None:
    store = root / "store"
    assert (store / "notes.txt").read_text() == "my notes"
    assert (store / "gen-analysis.md").read_text() == "# my analysis"
    assert (store / "tables_mine" / "t.csv").read_text() == "1,2"
    m = read_manifest(store)
    assert m.status == "complete" and m.top_k == 3  # the new store, beside the user's files


def _git_and_vocab(root: Path) -> None:
    _files(root)
    (root / "mine" / ".git").mkdir(parents=True)
    (root / "mine" / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / "mine" / "vocab.json").write_text('["my", "vocabulary"]')


def _merged_has_notes(root: Path) -> None:
    _store()(root)
    (root / "merged").mkdir()
    (root / "merged" / "notes.txt").write_text("mine")


ROWS = [
    Case("extract-overwrite-keeps-the-users-files",
         _extract("--out", "{root}/store", "--top-k", "3", "--overwrite"), None, "",
         setup=_store(_users_files), writes=("store",), check=_users_files_kept),
    Case("extract-into-a-folder-with-git-and-vocab", _extract("--out", "{root}/mine"),
         StoreError, "is not empty and holds no feature store (.git, vocab.json)",
         setup=_git_and_vocab),
    Case("merge-into-a-folder-with-files", _merge_into("merged"), StoreError,
         "is not empty and holds no feature store (notes.txt)", setup=_merged_has_notes),
    Case("extract-with-ctx-not-a-number", _extract_into_store, StoreCorruptError,
         "`ctx` = 'abc' is not an integer", setup=_store(_manifest(_set("ctx", "abc")))),
    Case("merge-with-shard-size-not-a-number", _merge, StoreCorruptError,
         "`feature_shard_size` = 'abc' is not an integer",
         setup=_store(_manifest(_set("feature_shard_size", "abc"))), check=_not_there("merged")),
    Case("merge-of-a-linked-sae-folder", _merge, StoreOutsideError, "leads outside the store",
         setup=_store(_linked_sae_folder), check=_not_there("merged")),
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


# -- the reader: a store damaged or edited by hand, opened through the API -------------------------
# Each row edits a copy of the module's store; opening it and reading one whole feature page
# (`_read_page`) must end in the named error, its message naming the file and the array, and
# the reader must change nothing under the case folder.


def _arrays(rel: str, change):
    """Rewrite one safetensors file of the current generation (`saes/` or `tables/` relative
    to it, or `windows.safetensors`) after `change(arrays)`."""
    def edit(store: Path) -> None:
        from safetensors.numpy import load_file, save_file

        m = json.loads((store / "manifest.json").read_text())
        base = store / (m["tables"] if rel.startswith("tables") else m["data"])
        path = base / rel.replace("SAE", m["saes"][0]["dir"]).removeprefix("tables/")
        arrays = load_file(str(path))
        change(arrays)
        save_file(arrays, str(path))
    return edit


def _setitem(key: str, where, value):
    def change(a):
        a[key][where] = value
    return change


def _replace(key: str, make):
    def change(a):
        a[key] = make(a[key])
    return change


def _sae_field(key: str, value):
    return _manifest(lambda m: m["saes"][0].__setitem__(key, value))


def _second_sae_named_like_the_first(m):
    m["saes"].append(dict(m["saes"][0], dir=m["saes"][0]["dir"] + "-b"))


def _band_acts_inf(a) -> None:
    """An infinite activation in the first band sample that holds a context."""
    import numpy as np

    used = np.argwhere(a["band_window"] >= 0)
    assert len(used), "the store has no band samples to damage"
    a["band_acts"][tuple(used[0])][0] = np.inf


def _linked_features_file(store: Path) -> None:
    m = json.loads((store / "manifest.json").read_text())
    other = store.parent / "elsewhere.safetensors"
    path = next((store / m["data"] / "saes").rglob("features_*.safetensors"))
    shutil.move(path, other)
    path.symlink_to(other)


FEATURES, TABLES = "saes/SAE/features_000000_000032.safetensors", "tables/SAE/features_000000_000032.safetensors"
SUMMARY = "saes/SAE/summary.safetensors"
READ_ROWS = [
    ("ctx-not-a-number", _manifest(_set("ctx", "abc")), StoreCorruptError,
     "`ctx` = 'abc' is not an integer"),
    ("shard-size-not-a-number", _manifest(_set("feature_shard_size", "abc")), StoreCorruptError,
     "`feature_shard_size` = 'abc' is not an integer"),
    ("top-k-a-bool", _manifest(_set("top_k", True)), StoreCorruptError, "`top_k` = True"),
    ("edges-not-increasing", _manifest(_set("histogram_edges", [1.0, 1.0, 2.0])),
     StoreCorruptError, "`histogram_edges` is not a list of increasing"),
    ("d-sae-a-string", _sae_field("d_sae", "32"), StoreCorruptError, "`saes[].d_sae` = '32'"),
    ("sae-name-a-list", _sae_field("name", ["a", "b"]), StoreCorruptError,
     "`saes[].name` = ['a', 'b'] is not a name"),
    ("two-saes-one-name", _manifest(_second_sae_named_like_the_first), StoreCorruptError,
     "two SAEs share the name"),
    ("linked-sae-folder", _linked_sae_folder, StoreOutsideError, "leads outside the store"),
    ("linked-features-file", _linked_features_file, StoreOutsideError, "leads outside the store"),
    ("histogram-rows-vs-edges", _arrays(FEATURES, _replace("histogram", lambda h: h[:, :50].copy())),
     StoreCorruptError, "`histogram` of shape [32, 50] I64, where the manifest implies [32, 90]"),
    ("top-window-shape", _arrays(FEATURES, _replace("top_window", lambda w: w[:, :2].copy())),
     StoreCorruptError, "`top_window` of shape [32, 2] I64, where the manifest implies [32, 20]"),
    ("top-pos-dtype", _arrays(FEATURES, _replace("top_pos", lambda p: p.astype("int64"))),
     StoreCorruptError, "`top_pos` of shape [32, 20] I64, where the manifest implies [32, 20] I32"),
    ("sketch-missing", _arrays(FEATURES, lambda a: a.pop("token_sketch")), StoreCorruptError,
     "lacks the arrays ['token_sketch']"),
    ("top-pos-outside-the-context", _arrays(FEATURES, _setitem("top_pos", (0, 0), 16)),
     StoreCorruptError, "a position outside the context (0..15) in `top_pos`"),
    ("top-value-nan", _arrays(FEATURES, _setitem("top_value", (0, 0), float("nan"))),
     StoreCorruptError, "a NaN, infinite or negative activation in `top_value`"),
    ("top-acts-nan", _arrays(FEATURES, _setitem("top_acts", (0, 0, 3), float("nan"))),
     StoreCorruptError, "a NaN or infinite activation in `top_acts`"),
    ("band-acts-inf", _arrays(FEATURES, _band_acts_inf), StoreCorruptError,
     "a NaN or infinite activation in `band_acts`"),
    ("histogram-negative", _arrays(FEATURES, _setitem("histogram", (0, 3), -5)),
     StoreCorruptError, "a negative count in `histogram`"),
    ("neighbour-index-past-d-sae", _arrays(TABLES, _setitem("neighbour_index", (0, 0), 32)),
     StoreCorruptError, "a feature index >= d_sae (32) in `neighbour_index`"),
    ("neighbour-cosine-nan", _arrays(TABLES, _setitem("neighbour_cosine", (0, 1), float("nan"))),
     StoreCorruptError, "a NaN or infinite value in `neighbour_cosine`"),
    ("neighbour-shape", _arrays(TABLES, _replace("neighbour_index", lambda i: i[:, :3].copy())),
     StoreCorruptError, "`neighbour_index` of shape [32, 3]"),
    ("max-activation-inf", _arrays(SUMMARY, _setitem("max_activation", 0, float("inf"))),
     StoreCorruptError, "a NaN or infinite value in `max_activation`"),
    ("windows-not-ascending", _arrays("windows.safetensors", _replace(
        "window_index", lambda w: w[::-1].copy())), StoreCorruptError,
     "window indices that do not ascend"),
]


def _read_page(path: Path) -> None:
    """Everything the dashboard's feature page reads of feature 0."""
    from scope.store import open_store

    s = open_store(path)
    name = s.sae_names[0]
    s.densities(name)
    f = s.feature(name, 0)
    f.histogram, f.top_examples, f.band_examples, f.top_logits, f.neighbours  # noqa: B018
    f.fires_on, f.label  # noqa: B018


@pytest.mark.parametrize("row", [pytest.param(r, id=r[0]) for r in READ_ROWS])
def test_hostile_store_read(row, store, tmp_path):
    from hostile import outside, snapshot

    _, edit, error, fragment = row
    _SRC[:] = [store]
    _store(edit)(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(error) as info:
        _read_page(tmp_path / "store")
    assert fragment in str(info.value), str(info.value)
    assert str(tmp_path / "store") in str(info.value)  # the message names the store's file
    assert not outside(before, snapshot(tmp_path), ())


def test_corrupt_labels_file_leaves_the_data_readable(store, tmp_path):
    """A damaged labels.json is reported as such: labels fall back to the automatic ones and
    the explanation's error says the data is not affected (never "extract again")."""
    from scope.store import open_store

    _SRC[:] = [store]
    _store(_write("labels.json", b"{not json"))(tmp_path)
    s = open_store(tmp_path / "store")
    f = s.feature(s.sae_names[0], 0)
    clean = open_store(_SRC[0] / "out").feature(s.sae_names[0], 0)
    assert f.label == clean.label and f.label  # the automatic label, from intact data
    with pytest.raises(StoreError) as info:
        f.explanation  # noqa: B018
    assert "labels.json" in str(info.value) and "extract" not in str(info.value)


def test_a_store_rewritten_while_open_says_reopen(store, tmp_path):
    """A reader holding a store open while a run writes two new generations (the one it read is
    deleted) is told the store changed, never that it is corrupt; reopening reads it."""
    from scope.errors import StoreChangedError
    from scope.pipeline.checkpoint import load_state, save_state
    from scope.store import open_store

    _SRC[:] = [store]
    _store()(tmp_path)
    path = tmp_path / "store"
    s = open_store(path)
    name = s.sae_names[0]
    s.feature(name, 0).top_examples  # noqa: B018
    m = read_manifest(path)
    accs, pool = load_state(path, m)
    for _ in range(2):  # what a running extraction does at each checkpoint
        save_state(path, m, accs, pool)
    assert not (path / s.info.data).exists() and s.changed()
    s.feature(name, 1).top_examples  # noqa: B018 - a file it holds open still reads
    with pytest.raises(StoreChangedError, match="changed while it was open.*reopen it") as info:
        s.densities(name)  # its summary was in the deleted generation
    assert "extract again" not in str(info.value) and "delete" not in str(info.value)
    fresh = open_store(path)
    assert [e.window for e in fresh.feature(name, 1).top_examples] == [
        e.window for e in open_store(_SRC[0] / "out").feature(name, 1).top_examples]
