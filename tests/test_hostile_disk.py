"""Disk full, on a small tmpfs (needs root and `mount`; skipped elsewhere): every command ends
with one line and exit status 1, leaves no temporary file, and keeps what was there before."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml
from extract_helpers import cli_eval as _eval
from extract_helpers import cli_extract as _extract
from extract_helpers import cli_files as _files
from hostile import Case, params, run_case

from scope.errors import StoreFullError


def _mount(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                         capture_output=True)
    return res.returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "case" / "disk"
    if not _mount(disk, "64k"):
        pytest.skip("cannot mount a tmpfs here")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path) -> None:
    """An old report, then fill the rest of the disk."""
    (disk / "report.json").write_text('{"old": true}\n')
    try:
        with open(disk / "filler", "wb") as fh:
            while True:
                fh.write(b"\0" * 4096)
                fh.flush()
    except OSError:
        pass


def _setup_full(root: Path) -> None:
    _files(root)
    _fill(root / "disk")


def _old_report_kept(root: Path) -> None:
    assert (root / "disk" / "report.json").read_text() == '{"old": true}\n'
    assert sorted(p.name for p in (root / "disk").iterdir()) == ["filler", "report.json"]


def _no_temp_files(root: Path) -> None:
    leftovers = [p for p in (root / "disk").rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers, leftovers


def _train_on_disk(root: Path) -> list[str]:
    from builders import _cached_dir

    cfg = {"model": str(_cached_dir("gemma3")), "hook_name": "blocks.1.hook_resid_post",
           "corpus": str(root / "doc.txt"), "ctx": 16, "train_tokens": 4000, "eval_tokens": 16,
           "d_sae": 32, "batch_size": 64, "run_dir": str(root / "disk" / "run"),
           "out": str(root / "disk" / "sae"), "eval_lm_windows": 0, "threads": 1}
    (root / "train.yaml").write_text(yaml.safe_dump(cfg))
    (root / "doc.txt").write_text((root / "doc.txt").read_text() * 40)
    return ["train", "--config", str(root / "train.yaml")]


def _source_store(root: Path) -> None:
    """A complete store beside the small disk, to merge onto it."""
    from scope.cli.main import main

    _files(root)
    assert main(_extract("--out", "{root}/src")(root)) == 0


def _merge_onto_disk(root: Path) -> list[str]:
    return ["merge", str(root / "src"), "--out", str(root / "disk" / "merged")]


ROWS = [
    Case("eval-json-on-a-full-disk", _eval("--json", "{root}/disk/report.json"), OSError,
         "No space left on device", code=1, setup=_setup_full, writes=("disk",),
         check=_old_report_kept),
    Case("extract-onto-a-small-disk", _extract("--out", "{root}/disk/out"), StoreFullError,
         "not enough space in", code=1, setup=_files,
         writes=("disk",), check=_no_temp_files),
    Case("train-onto-a-small-disk", _train_on_disk, OSError,
         "No space left on device", code=1, setup=_files, writes=("disk",),
         check=_no_temp_files),
    Case("merge-onto-a-small-disk", _merge_onto_disk, StoreFullError, "not enough space in",
         code=1, setup=_source_store, writes=("disk",), check=_no_temp_files),
]


@pytest.mark.parametrize("case", params(ROWS))
def test_hostile_disk(case: Case, small_disk, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SCOPE_CACHE", str(tmp_path / "case" / "scope_cache"))
    writes = case.writes + ("train.yaml", "doc.txt", "scope_cache")
    case = Case(case.id, case.argv, case.error, case.fragment, case.code, case.setup, writes,
                case.check)
    run_case(case, tmp_path / "case", capsys, monkeypatch)
