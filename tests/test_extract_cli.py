"""`scope extract` / `scope merge` from the command line, torchrun ranks, and real signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from builders import TINY_TEXT, _cached_dir
from extract_helpers import manifest_core, store_arrays, synthetic_sae

from scope.cli.main import main
from scope.store import open_store

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model_dir = _cached_dir("gemma3")
    sae_dir = synthetic_sae(64, 32, "blocks.1.hook_resid_post", seed=3).save(root / "sae")
    corpus = root / "docs.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": f"{i}: " + " ".join(TINY_TEXT) * (1 + i % 4)})
                                for i in range(30)))
    return {"root": root, "model": str(model_dir), "sae": str(sae_dir), "corpus": str(corpus)}


def _args(files, out, *extra):
    return ["extract", "--model", files["model"], "--sae", files["sae"], "--corpus",
            files["corpus"], "--out", str(out), "--tokens", "1600", "--ctx", "16",
            "--batch-size", "4", "--top-k", "5", "--no-progress", *extra]


@pytest.fixture(scope="module")
def single(files):
    out = files["root"] / "single"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same as each torchrun rank (OMP_NUM_THREADS=1)
    try:
        assert main(_args(files, out)) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def test_cli_extract_writes_a_complete_store(single, files):
    store = open_store(single)
    assert store.manifest["status"] == "complete"
    assert store.manifest["model"]["spec"] == files["model"]
    assert store.manifest["saes"][0]["spec"] == files["sae"]
    assert store.manifest["tokens"] == 100 * 16


def test_cli_config_file_and_errors(single, files, tmp_path, capsys):
    cfg = tmp_path / "x.yaml"
    cfg.write_text(f"out: {single}\ntop_k: 3\nmodel: {files['model']}\nsae: [{files['sae']}]\n"
                   f"corpus: {files['corpus']}\ntokens: 1600\nctx: 16\nbatch_size: 4\n")
    assert main(["extract", "--config", str(cfg), "--no-progress"]) == 2
    assert "different configuration" in capsys.readouterr().err
    assert main(["extract", "--model", files["model"], "--sae", files["sae"], "--no-progress"]) == 2
    assert "--out" in capsys.readouterr().err


def test_cli_shards_and_merge(single, files):
    parts = [files["root"] / f"part{i}" for i in range(2)]
    for i, p in enumerate(parts):
        assert main(_args(files, p, "--shard", f"{i}/2")) == 0
    merged = files["root"] / "merged"
    assert main(["merge", *map(str, parts), "--out", str(merged)]) == 0
    assert store_arrays(merged) == store_arrays(single)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_cpu_ranks_equal_the_single_run(single, files):
    out = files["root"] / "torchrun"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "scope.cli.main",
           *_args(files, out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert not (out / "ranks").exists()
    assert store_arrays(out) == store_arrays(single)
    assert manifest_core(out) == manifest_core(single)


@pytest.mark.slow
def test_sigint_leaves_a_partial_store_that_resumes_identically(files, tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "run"
    args = _args(files, out, "--checkpoint-every", "0")
    args[args.index("--tokens") + 1] = "48000"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "scope.cli.main", *args], cwd=REPO, env=env,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        m = out / "manifest.json"
        if m.is_file() and json.loads(m.read_text()).get("windows", 0) > 0:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130, proc.stderr.read()[-2000:]
    partial = open_store(out)
    assert partial.manifest["status"] == "partial" and 0 < partial.manifest["windows"] < 3000
    res = subprocess.run([sys.executable, "-m", "scope.cli.main", *args], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    ref_args = list(args)
    ref_args[ref_args.index("--out") + 1] = str(ref)
    res = subprocess.run([sys.executable, "-m", "scope.cli.main", *ref_args], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0
    assert store_arrays(out) == store_arrays(ref)
