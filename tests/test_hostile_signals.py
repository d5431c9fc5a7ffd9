"""Signals: Ctrl-C or SIGTERM in the middle of `scope train` / `scope extract` ends with one line
and exit status 130 / 143 (no traceback), and rerunning resumes to the very result of an
uninterrupted run (bit for bit)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from builders import TINY_TEXT, _cached_dir
from hostile import REPO, run_subprocess

pytestmark = pytest.mark.slow


def _train_config(root: Path, name: str) -> Path:
    corpus = root / "corpus"
    corpus.mkdir(exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    for i in range(30):
        idx = torch.randint(len(TINY_TEXT), (150,), generator=gen).tolist()
        (corpus / f"doc{i}.txt").write_text(" ".join(TINY_TEXT[j] for j in idx))
    cfg = {"model": str(_cached_dir("gemma3")), "hook_name": "blocks.1.hook_resid_post",
           "corpus": str(corpus), "ctx": 32, "train_tokens": 3000, "eval_tokens": 100,
           "d_sae": 256, "batch_size": 256, "epochs": 60, "lr": 1.0e-3, "l0_warmup_steps": 5,
           "lr_warmup_steps": 2, "log_every": 50, "checkpoint_every": 20, "threads": 1,
           "run_dir": str(root / f"run-{name}"), "out": str(root / f"sae-{name}"),
           "eval_lm_windows": 0}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _popen(args: list[str], cwd: Path) -> subprocess.Popen:
    import os

    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return subprocess.Popen([sys.executable, "-m", "scope.cli.main", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not path.exists():
        time.sleep(0.05)
    assert proc.poll() is None, f"finished before the signal: {proc.stderr.read()[-2000:]}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """Weights of an uninterrupted run."""
    root = tmp_path_factory.mktemp("signals_ref")
    ref = run_subprocess(["train", "--config", str(_train_config(root, "ref"))], root)
    assert ref.returncode == 0, ref.stderr[-2000:]
    return root / "sae-ref" / "sae_weights.safetensors"


@pytest.mark.parametrize(("sig", "code", "word"), [(signal.SIGINT, 130, "interrupted"),
                                                    (signal.SIGTERM, 143, "terminated")])
def test_signal_during_train_then_resume_is_bit_identical(reference, tmp_path, sig, code, word):
    from safetensors.torch import load_file

    config = _train_config(tmp_path, "cut")
    proc = _popen(["train", "--config", str(config)], tmp_path)
    _wait_for(tmp_path / "run-cut" / "checkpoint.safetensors", proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == code, err[-2000:]
    assert f"scope train: {word}" in err and "Traceback" not in err, err[-2000:]
    assert not (tmp_path / "sae-cut").exists()
    again = run_subprocess(["train", "--config", str(config)], tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming from" in again.stderr
    a = load_file(str(reference))
    b = load_file(str(tmp_path / "sae-cut" / "sae_weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_during_extract_leaves_a_partial_store(tmp_path):
    from extract_helpers import synthetic_sae

    (tmp_path / "doc.txt").write_text(" ".join(TINY_TEXT) * 400)
    synthetic_sae(64, 32, "blocks.1.hook_resid_post", seed=3).save(tmp_path / "sae")
    args = ["extract", "--model", str(_cached_dir("gemma3")), "--sae", str(tmp_path / "sae"),
            "--corpus", str(tmp_path / "doc.txt"), "--out", str(tmp_path / "out"), "--ctx", "16",
            "--batch-size", "2", "--checkpoint-every", "0", "--no-progress"]
    proc = _popen(args, tmp_path)
    _wait_for(tmp_path / "out" / "manifest.json", proc)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode in (130, 143) and "Traceback" not in err, err[-2000:]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["status"] == "partial"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["doc.txt", "out", "sae"]
