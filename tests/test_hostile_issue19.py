"""Issue 19's cases that no other hostile suite covers through the command line: `scope
attribute` (another SAE's store, a prompt past the context, an SAE made for another model,
`--graph` under a file) and the explorer's commands on a real store (`labels import` over
scored explanations, device files, FIFOs, deep JSON; `explain --features` bounds; `export`
into the store, of a partial store, and re-exported with another batch size). Each row runs
`scope ...` in-process (tests/hostile.py) and asserts the error's class, a fragment naming the
argument or the fix, the exit status, and that nothing outside the allowed paths changed; the
rows that must keep data compare the files byte for byte.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from extract_helpers import cli_files as _files
from extract_helpers import cli_model as _model
from extract_helpers import cli_store as _cli_store
from extract_helpers import synthetic_sae
from hostile import Case, params, run_case

from scope.errors import (
    AttributionError,
    EndpointConfigError,
    ExplanationImportError,
    ExportError,
    StoreCorruptError,
    StoreError,
    UsageError,
)

HOOK = "blocks.1.hook_resid_post"
_SRC: list[Path] = []  # [the module's cli_files root with `out`, the explorer store]


@pytest.fixture(scope="module")
def cli_store(tmp_path_factory) -> Path:
    """cli_files + `scope extract` of its `sae` into ROOT/out (the spec recorded is ROOT/sae)."""
    return _cli_store(tmp_path_factory.mktemp("h19_cli"))


@pytest.fixture(scope="module")
def explore_store(tmp_path_factory) -> Path:
    from explorer_helpers import build_store

    return build_store(tmp_path_factory.mktemp("h19_explore"))


# -- scope attribute ------------------------------------------------------------------------------


def _attr(*extra: str, sae: str = "{src}/sae", prompt: str = "The cat sat on the"):
    def argv(root: Path) -> list[str]:
        src = _SRC[0]
        args = ["attribute", "--model", _model(), "--sae", sae.format(root=root, src=src),
                "--prompt", prompt, "--target", "m", "--top", "3",
                "--ablation-k", "1", "--steps", "2"]
        return args + [e.format(root=root, src=src) for e in extra]
    return argv


def _attr_files(root: Path) -> None:
    _files(root)
    shutil.copytree(_SRC[0] / "out", root / "store")
    synthetic_sae(64, 32, HOOK, seed=3, model_name="gemma-2-9b").save(root / "foreign_sae")


ATTRIBUTE_ROWS = [
    Case("attribute-store-of-another-sae-same-hook",
         _attr("--store", "{root}/store", sae="{root}/other_sae"), AttributionError,
         "is not the SAE you attribute with (spec"),
    Case("attribute-store-of-another-width", _attr("--store", "{root}/store",
                                                   sae="{root}/narrow_sae"),
         AttributionError, "d_sae 32 vs 16"),
    Case("attribute-store-of-its-sae-works", _attr("--store", "{root}/store"),
         fragment="sum of attributions: features"),
    Case("attribute-prompt-past-the-context",
         _attr(prompt="cat " * 2000),
         AttributionError, "shorten it"),
    Case("attribute-graph-under-a-file", _attr("--graph", "{root}/a_file/g.json"), UsageError,
         "argument --graph: "),
    Case("attribute-graph-is-a-folder", _attr("--graph", "{root}"), UsageError,
         "is a folder; give a file"),
    Case("attribute-sae-made-for-another-model-warns", _attr(sae="{root}/foreign_sae"),
         fragment="sum of attributions: features"),
]


@pytest.mark.parametrize("case", params(ATTRIBUTE_ROWS))
def test_hostile_attribute(case: Case, cli_store, tmp_path, capsys, monkeypatch, caplog):
    _SRC[:] = [cli_store]
    case.setup = _attr_files
    monkeypatch.setenv("SCOPE_CACHE", str(tmp_path / "scope_cache"))
    run_case(case, tmp_path, capsys, monkeypatch)
    if case.id == "attribute-sae-made-for-another-model-warns":
        assert "was trained on 'gemma-2-9b' but the model is" in caplog.text


def test_attribute_labels_come_from_the_stores_sae(cli_store, tmp_path, capsys, monkeypatch):
    """With the store of the very SAE, the label column is the store's label of each feature."""
    import re

    import scope
    from scope.cli.main import main

    _SRC[:] = [cli_store]
    monkeypatch.setenv("SCOPE_CACHE", str(tmp_path / "scope_cache"))
    store = scope.open_store(cli_store / "out")
    assert main(_attr("--store", str(cli_store / "out"))(tmp_path)) == 0
    rows = [line for line in capsys.readouterr().out.splitlines()
            if re.match(r"^\s+\d+\s+[+-]\d", line)]
    assert rows
    for line in rows:
        label = store.feature(store.sae_names[0], int(line.split()[3])).label.strip()
        assert label and line.rstrip().endswith(label), (line, label)


# -- the explorer's commands on a real store --------------------------------------------------------


def _row(index, text="x", **kw) -> dict:
    return {"modelId": "tiny-gemma3", "layer": "2-test-res-96", "index": index,
            "description": text, **kw}


def _explore(extra=None):
    def setup(root: Path) -> None:
        shutil.copytree(_SRC[1], root / "store")
        if extra:
            extra(root)
    return setup


def _jsonl(name: str, rows: list[dict]):
    return lambda root: (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


def _scored_then_file(root: Path) -> None:
    """A scored explanation of feature 2 (as `scope explain` saves it), then a file naming 2, 3."""
    import scope
    from scope.store import labels as L

    store = scope.open_store(root / "store")
    labels = L.Labels(root / "store")
    labels.update(store.sae_names[0], {2: L.Explanation("scored by scope", 0.9, "qwen", "v2")})
    labels.save()
    (root / "before.json").write_bytes((root / "store" / L.LABELS_FILE).read_bytes())
    _jsonl("np.jsonl", [_row("2", "neuronpedia's two"), _row("3", "neuronpedia's three")])(root)


def _scored_kept(root: Path) -> None:
    import scope

    store = scope.open_store(root / "store")
    sae = store.sae_names[0]
    assert store.feature(sae, 2).explanation.text == "scored by scope"
    assert store.feature(sae, 2).explanation.score == 0.9
    assert store.feature(sae, 3).explanation.text == "neuronpedia's three"
    before = json.loads((root / "before.json").read_text())["saes"][sae]["2"]
    after = json.loads((root / "store" / "labels.json").read_text())["saes"][sae]["2"]
    assert after == before  # the scored entry, field for field


def _partial(root: Path) -> None:
    p = root / "store" / "manifest.json"
    m = json.loads(p.read_text())
    m["status"] = "partial"
    p.write_text(json.dumps(m))


def _import(name: str, *extra: str):
    return lambda r: ["labels", "import", name.format(root=r), str(r / "store"), *extra]


def _export(out: str, *extra: str):
    return lambda r: ["export", "neuronpedia", str(r / "store"), "--out", out.format(root=r),
                      "--no-logit-histograms", *extra]


def _explain(*extra: str):
    return lambda r: ["explain", str(r / "store"), "--endpoint", "http://127.0.0.1:9/v1",
                      "--model", "m", *extra]


def _export_twice(root: Path) -> None:
    """A first export with 8 features per file: a re-export with 64 must leave no batch-2..11."""
    from scope.cli.main import main

    _explore()(root)
    assert main(_export("{root}/np", "--batch-size", "8")(root)) == 0


def _labels_bytes(root: Path, want: bytes) -> None:
    assert (root / "store" / "labels.json").read_bytes() == want  # the user's file, untouched


def _nan_top_acts(root: Path) -> None:
    """A NaN in a per-token activation of the first feature with a kept context."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    m = json.loads((root / "store" / "manifest.json").read_text())
    f = next((root / "store" / m["data"] / "saes" / m["saes"][0]["dir"]).glob("features_*"))
    arrays = load_file(str(f))
    first = np.argwhere(arrays["top_window"] >= 0)[0]
    arrays["top_acts"][tuple(first)][0] = np.nan
    save_file(arrays, str(f))


def _no_batches(root: Path) -> None:
    assert not list(root.rglob("batch-*")), "an export file was written from a damaged store"


def _two_batches(root: Path) -> None:
    files = sorted(p.name for p in (root / "np").rglob("batch-*"))
    assert files == ["batch-0.json", "batch-1.json"], files


def _store_bytes_kept(root: Path) -> None:
    """Every file of the store as it was (bytes and all) after a refused command."""
    src = _SRC[1]
    got = {p.relative_to(root / "store"): p.read_bytes() for p in (root / "store").rglob("*")
           if p.is_file()}
    want = {p.relative_to(src): p.read_bytes() for p in src.rglob("*") if p.is_file()}
    if (root / "store" / "manifest.json").read_bytes() != want[Path("manifest.json")]:
        got.pop(Path("manifest.json"))  # the row edited it on purpose (partial)
        want.pop(Path("manifest.json"))
    assert got == want


EXPLORE_ROWS = [
    Case("import-over-scored-keeps-them", _import("{root}/np.jsonl"),
         fragment="kept 1 scored explanations already in the store (--replace-scored",
         setup=_explore(_scored_then_file), writes=("store/labels.json",), check=_scored_kept),
    Case("import-dev-zero", _import("/dev/zero"), ExplanationImportError, "is a device",
         setup=_explore(), check=_store_bytes_kept),
    Case("import-fifo", _import("{root}/pipe.jsonl"), ExplanationImportError, "is a FIFO",
         setup=_explore(lambda r: os.mkfifo(r / "pipe.jsonl")), check=_store_bytes_kept),
    Case("import-deep-json", _import("{root}/deep.json"), ExplanationImportError,
         "nested too deeply",
         setup=_explore(lambda r: (r / "deep.json").write_text("[" * 200_000 + "]" * 200_000)),
         check=_store_bytes_kept),
    Case("import-index-true", _import("{root}/b.jsonl"), ExplanationImportError,
         "index True is not an integer", setup=_explore(_jsonl("b.jsonl", [_row(True)])),
         check=_store_bytes_kept),
    Case("import-into-a-corrupt-labels-file-keeps-it", _import("{root}/b.jsonl"), StoreError,
         "labels.json", setup=_explore(lambda r: (_jsonl("b.jsonl", [_row("1")])(r), (
             r / "store" / "labels.json").write_bytes(b'{"format_version": 2, "saes": {'))),
         check=lambda r: _labels_bytes(r, b'{"format_version": 2, "saes": {')),
    Case("explain-on-a-corrupt-labels-file-keeps-it", _explain("--features", "1-2"), StoreError,
         "labels.json", setup=_explore(lambda r: (r / "store" / "labels.json").write_bytes(
             b"\xff not json")), check=lambda r: _labels_bytes(r, b"\xff not json")),
    Case("explain-features-reversed", _explain("--features", "5-3"), UsageError,
         "argument --features", setup=_explore(), check=_store_bytes_kept),
    Case("explain-features-ten-billion", _explain("--features", "0-10000000000"), UsageError,
         "names more than 16,777,216 features", setup=_explore(), check=_store_bytes_kept),
    Case("explain-endpoint-with-crlf", _explain("--endpoint", "http://127.0.0.1:9/v1\r\nX: 1"),
         EndpointConfigError,
         "control characters", setup=_explore(), check=_store_bytes_kept),
    Case("export-out-is-the-store", _export("{root}/store"), ExportError, "inside the store",
         setup=_explore(), check=_store_bytes_kept),
    Case("export-out-inside-the-store", _export("{root}/store/np"), ExportError,
         "inside the store", setup=_explore(), check=_store_bytes_kept),
    Case("export-out-a-link-into-the-store", _export("{root}/link"), ExportError,
         "inside the store", setup=_explore(lambda r: (r / "link").symlink_to(
             r / "store" / "np-here", target_is_directory=True)), check=_store_bytes_kept),
    Case("export-of-a-partial-store", _export("{root}/np"), ExportError, "--allow-partial",
         setup=_explore(_partial), check=_store_bytes_kept),
    Case("export-nan-activation-is-refused", _export("{root}/np"), StoreCorruptError,
         "a NaN or infinite activation in `top_acts`", setup=_explore(_nan_top_acts),
         writes=("np",), check=_no_batches),
    Case("re-export-other-batch-size-leaves-no-stale-files",
         _export("{root}/np", "--batch-size", "64"), fragment="wrote 2 batch files",
         setup=_export_twice, writes=("np",), check=_two_batches),
]


@pytest.mark.parametrize("case", params(EXPLORE_ROWS))
def test_hostile_explore_cli(case: Case, cli_store, explore_store, tmp_path, capsys,
                             monkeypatch):
    _SRC[:] = [cli_store, explore_store]
    run_case(case, tmp_path, capsys, monkeypatch)


# -- the store's public window pool (the explore sampler reads it, never the private cache) -------


def test_window_pool_is_public_and_equals_the_file(explore_store):
    from safetensors.numpy import load_file

    import scope
    from scope.errors import StoreError
    from scope.store import schema as S

    store = scope.open_store(explore_store)
    raw = load_file(str(explore_store / store.info.data / S.WINDOWS))
    ids = store.window_ids()
    assert ids.dtype == "int64" and (ids == raw[S.WINDOW_INDEX]).all() and len(ids) > 3
    assert not ids.flags.writeable  # the reader's cached pool cannot be edited through it
    for row in (0, len(ids) // 2, len(ids) - 1):
        assert (store.window_tokens(int(ids[row])) == raw[S.WINDOW_TOKENS][row]).all()
        assert (store.window_tokens(ids[row]) == raw[S.WINDOW_TOKENS][row]).all()  # numpy ints
    missing = int(ids.max()) + 1
    with pytest.raises(StoreError, match=f"keeps no window {missing}.*window_ids"):
        store.window_tokens(missing)
    with pytest.raises(StoreError, match="is not an integer id"):
        store.window_tokens(True)
    # a sampled example's tokens are the pool's: an example's window round-trips
    e = store.feature(store.sae_names[0], 0).top_examples[0]
    vocab = store.vocab
    assert [vocab[t] for t in store.window_tokens(e.window)] == e.tokens


def test_the_sampler_uses_only_the_public_window_api():
    import ast

    import scope.explore.sampling as sampling

    tree = ast.parse(Path(sampling.__file__).read_text())
    private = sorted({n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
                      and n.attr.startswith("_window")})
    assert private == []
