"""Hostile command lines and corpora: every mistake is a named scope error with exit status 2
(1 for runtime faults), caught before a model is loaded or a file is written; the misleading
cases of the hardening issue behave correctly (see tests/hostile.py for the harness)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from extract_helpers import cli_eval as _eval
from extract_helpers import cli_extract as _extract
from extract_helpers import cli_files as _files
from extract_helpers import cli_model as _model
from extract_helpers import cli_override as _override
from extract_helpers import cli_steer as _steer
from hostile import Case, params, run_case

from scope.errors import (
    ConfigError,
    CorpusError,
    SAEFormatError,
    SteeringError,
    StoreError,
    UnknownModelError,
    UnknownSAEError,
    UsageError,
)


def _argv(*args: str):
    return lambda root: [a.format(root=root) for a in args]


def _write(name: str, data: bytes | str):
    def setup(root: Path) -> None:
        _files(root)
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return setup


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A real store of `sae` (seed 3) over the small corpus, made once."""
    from scope.cli.main import main

    root = tmp_path_factory.mktemp("hostile_store")
    _files(root)
    assert main(_extract()(root)) == 0
    return root / "out"


def _with_store(root: Path) -> None:
    _files(root)
    shutil.copytree(_STORE[0], root / "store")


_STORE: list[Path] = []


def _nothing_at(*names: str):
    def check(root: Path) -> None:
        for name in names:
            assert not (root / name).exists(), f"{name} was created"
    return check


def _report_ok(root: Path) -> None:
    report = json.loads((root / "report.json").read_text())
    assert report["n_tokens"] > 0 and report["l0"] >= 0


ROWS = [
    # --- argument values: usage errors before anything runs ---------------------------------
    Case("extract-ctx-0", _extract("--ctx", "0"), UsageError, "argument --ctx: '0' is too small"),
    Case("extract-ctx-1", _extract("--ctx", "1"), UsageError, "need a context length (>= 2"),
    Case("eval-ctx-0", _eval("--ctx", "0"), UsageError, "argument --ctx: '0' is too small"),
    Case("demo-ctx-1", _argv("demo", "--ctx", "1", "--no-dashboard"), UsageError,
         "argument --ctx"),
    Case("extract-ctx-float", _extract("--ctx", "12.5"), UsageError, "'12.5' is not a context"),
    Case("extract-tokens-0", _extract("--tokens", "0"), UsageError, "need a positive integer"),
    Case("extract-tokens-negative", _extract("--tokens", "-5"), UsageError,
         "argument --tokens: '-5' is too small"),
    Case("extract-batch-size-0", _extract("--batch-size", "0"), UsageError, "--batch-size"),
    Case("extract-top-k-0", _extract("--top-k", "0"), UsageError, "--top-k"),
    Case("extract-shard-out-of-range", _extract("--shard", "3/2"), UsageError,
         "'3/2': expected i/n with 0 <= i < n"),
    Case("extract-shard-garbage", _extract("--shard", "half"), UsageError, "expected i/n"),
    Case("extract-checkpoint-every-negative", _extract("--checkpoint-every", "-1"), UsageError,
         "need a number of seconds >= 0"),
    Case("extract-checkpoint-every-nan", _extract("--checkpoint-every", "nan"), UsageError,
         "is not a finite number"),
    Case("extract-device-missing-gpu", _extract("--device", "cuda:99"), UsageError, "'cuda:99'"),
    Case("extract-device-garbage", _extract("--device", "gpu"), UsageError,
         "'gpu' is not a torch device"),
    Case("extract-out-is-a-file", _extract("--out", "{root}/a_file"), UsageError,
         "a_file: is a file, not a folder"),
    Case("extract-out-under-a-file", _extract("--out", "{root}/a_file/x"), UsageError,
         "which is a file"),
    Case("merge-out-is-a-file", _argv("merge", "{root}/sae", "--out", "{root}/a_file"),
         UsageError, "is a file, not a folder"),
    Case("merge-out-is-an-input", _argv("merge", "{root}/sae", "--out", "{root}/sae"),
         ConfigError, "lies inside the input"),
    Case("demo-out-is-a-file", _argv("demo", "--out", "{root}/a_file", "--no-dashboard"),
         UsageError, "is a file"),
    Case("train-out-is-a-file", _argv("train", "--out", "{root}/a_file"), ConfigError,
         "RunConfig.out"),
    Case("train-run-dir-is-a-file", _argv("train", "--run-dir", "{root}/a_file"), ConfigError,
         "RunConfig.run_dir"),
    Case("train-d-sae-0", _argv("train", "--d-sae", "0"), ConfigError,
         "OptimConfig.d_sae must be > 0, got 0"),
    Case("train-lr-nan", _argv("train", "--lr", "nan"), ConfigError, "OptimConfig.lr must be > 0"),
    Case("train-save-dtype", _argv("train", "--save-dtype", "int8"), ConfigError, "save_dtype"),
    Case("eval-json-is-a-folder", _eval("--json", "{root}"), UsageError, "is a folder"),
    Case("steer-strength-nan", _steer("--feature", "3:nan"), UsageError,
         "expected INDEX:STRENGTH"),
    Case("steer-index-not-a-number", _steer("--feature", "x:1"), UsageError, "'x:1'"),
    Case("steer-negative-index", _steer("--feature", "-3:2"), UsageError, "--feature"),
    Case("steer-missing-prompt", _argv("steer", "--feature", "1:1"), UsageError,
         "required: --prompt"),
    Case("steer-temperature-negative", _steer("--temperature", "-1"), UsageError,
         "--temperature"),
    Case("steer-temperature-inf", _steer("--temperature", "inf"), UsageError, "not a finite"),
    Case("steer-max-new-tokens-negative", _steer("--max-new-tokens", "-1"), UsageError,
         "--max-new-tokens"),
    Case("steer-index-beyond-sae", _steer("--feature", "32:1"), SteeringError,
         "feature 32 does not exist", setup=_files),
    Case("dashboard-port-0", _argv("dashboard", "{root}", "--port", "0"), UsageError,
         "need a TCP port (1-65535)"),
    Case("dashboard-port-too-big", _argv("dashboard", "{root}", "--port", "70000"), UsageError,
         "'70000' is too big"),
    Case("saes-layer-negative", _argv("saes", "gemma-scope-2b-pt-res", "--layer", "-1"),
         UsageError, "--layer"),
    Case("unknown-flag", _extract("--ctxx", "5"), UsageError, "unrecognized arguments: --ctxx"),
    Case("unknown-command", _argv("extrct"), UsageError, "invalid choice: 'extrct'"),
    Case("unknown-release", _argv("saes", "gemma-scope-2b-pt-rse"), UnknownSAEError,
         "unknown SAE release"),
    # --- names and files that do not exist: nothing written ---------------------------------
    Case("extract-corpus-typo-leaves-out-clean", _extract("--corpus", "{root}/doc.tx"),
         CorpusError, "doc.tx: no such file or folder", setup=_files, check=_nothing_at("out")),
    Case("extract-model-typo", lambda r: _override(_extract()(r), ["--model", str(r / "nope")]),
         UnknownModelError, "no such file or folder", setup=_files, check=_nothing_at("out")),
    Case("extract-sae-typo", _extract("--sae", "{root}/sea"), UnknownSAEError,
         "neither a local file/folder nor a release name", setup=_files,
         check=_nothing_at("out")),
    Case("extract-sae-corrupt", _extract(), SAEFormatError, "not valid JSON",
         setup=_write("sae/cfg.json", "{"), check=_nothing_at("out")),
    # --- corpora ----------------------------------------------------------------------------
    Case("eval-corpus-empty-file", _eval(), CorpusError, "holds no readable text",
         setup=_write("doc.txt", "")),
    Case("eval-corpus-not-utf8", _eval(), CorpusError, "'not UTF-8': 1",
         setup=_write("doc.txt", b"\xff\xfe\x00bad" * 50)),
    Case("eval-corpus-too-short", _eval(), CorpusError, "too short for one window",
         setup=_write("doc.txt", "hi")),
    Case("eval-corpus-folder-without-text", _eval("--corpus", "{root}/sub"), CorpusError,
         "holds no .txt, .jsonl or .parquet files", setup=_write("sub/x.bin", b"\0")),
    Case("eval-corpus-jsonl-wrong-field", _eval("--corpus", "{root}/d.jsonl"), CorpusError,
         "no text field 'text'", setup=_write("d.jsonl", '{"body": "x"}\n' * 5)),
    Case("eval-corpus-jsonl-garbage", _eval("--corpus", "{root}/d.jsonl"), CorpusError,
         "'line is not JSON': 3", setup=_write("d.jsonl", "{\n[\nnot json\n")),
    Case("eval-corpus-device-file", _eval("--corpus", "/dev/zero"), CorpusError,
         "not a regular file or folder", setup=_files),
    Case("eval-heldout-of-one-document", _eval("--split", "heldout"), CorpusError,
         "all 1 of its documents fall in the train split", setup=_files),
    # --- correct behaviour -------------------------------------------------------------------
    Case("eval-single-small-file-works", _eval("--json", "{root}/report.json"),
         fragment="delta_lm_loss", setup=_files, writes=("report.json",), check=_report_ok),
    Case("attribute-on-a-small-model-works",
         lambda r: ["attribute", "--model", _model(), "--sae", str(r / "sae"), "--prompt",
                    "The cat sat on the", "--target", "m", "--top", "3", "--ablation-k", "1"],
         fragment="sum of attributions: features", setup=_files),
    Case("attribute-graph-is-a-folder",
         lambda r: ["attribute", "--model", _model(), "--sae", str(r / "sae"), "--prompt", "x",
                    "--target", " y", "--graph", str(r)], UsageError, "is a folder; give a file"),
    Case("version", _argv("--version"), fragment="scope "),
    Case("no-command-prints-help", _argv(), fragment="Start with `scope demo`"),
    # --- --relative must be the same SAE, not just the same name ----------------------------
    Case("relative-store-of-another-sae", _steer("--sae", "{root}/other_sae", "--relative",
                                                 "{root}/store"),
         SteeringError, "is not the SAE you loaded (spec", setup=_with_store),
    Case("relative-store-of-another-width", _steer("--sae", "{root}/narrow_sae", "--relative",
                                                   "{root}/store"),
         SteeringError, "d_sae 32 vs 16", setup=_with_store),
    Case("relative-store-missing", _steer("--relative", "{root}/nostore"), StoreError,
         "nostore", setup=_files),
    Case("relative-same-sae-works",
         lambda r: _steer("--relative", "{root}/store", "--sae", str(_STORE[0].parent / "sae"))(r),
         fragment="steered (add 3:2", setup=_with_store),
    # --- the dashboard warns before listening beyond this machine ---------------------------
    Case("dashboard-public-host-warns", _argv("dashboard", "{root}/nostore", "--host",
                                              "0.0.0.0"),
         StoreError, "not a feature store", setup=_files),
]


@pytest.mark.parametrize("case", params(ROWS))
def test_hostile_cli(case: Case, store, tmp_path, capsys, monkeypatch, caplog):
    _STORE[:] = [store]
    case.setup = case.setup or _files  # every row sees the same inputs unless it says otherwise
    monkeypatch.setenv("SCOPE_CACHE", str(tmp_path / "scope_cache"))
    run_case(case, tmp_path, capsys, monkeypatch)
    if case.id == "dashboard-public-host-warns":
        assert "--host 0.0.0.0 lets anyone who can reach this port" in caplog.text
        assert "steering page runs the model" in caplog.text


def test_loopback_hosts_do_not_warn(caplog):
    from scope.cli.flags import warn_if_exposed

    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        warn_if_exposed(host)
    assert "lets anyone" not in caplog.text
    warn_if_exposed("192.168.1.5")
    assert "lets anyone" in caplog.text
