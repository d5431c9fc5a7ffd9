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


# --------------------------------------------------------------------------------------------
# a quiet first run: no third-party bars on the terminal, no silent decoder-tables step
# --------------------------------------------------------------------------------------------

BARS = ("Loading weights", "Writing model shards", "Converting and de-quantizing")


def test_model_load_prints_no_third_party_bars_but_keeps_warnings(tmp_path, capfd, caplog):
    """A real load of a checkpoint folder: transformers' bars stay off stderr, scope logs one
    line; warnings and transformers' log records inside the quiet block still reach stderr."""
    import logging
    import warnings

    import torch
    from builders import tiny_gemma3_dir
    from transformers import AutoModelForCausalLM
    from transformers import modeling_gguf_pytorch_utils as hf_gguf
    from transformers.utils import logging as hf_logging

    from scope.model.gguf import quiet_bars
    from scope.model.load import load_model

    model_dir = tiny_gemma3_dir(tmp_path / "model")  # its own save_pretrained shows a bar
    capfd.readouterr()
    caplog.set_level(logging.INFO, logger="scope")
    model = load_model(str(model_dir), device="cpu", dtype=torch.float32)
    err = capfd.readouterr().err
    assert not [b for b in BARS if b in err] and "it/s" not in err, err
    assert [r.getMessage() for r in caplog.records if r.name == "scope.model.load"] == [
        f"loading {model.cfg.model_name} weights from {model_dir.resolve()}"]

    seen: list[str] = []
    catch = logging.Handler()
    catch.emit = lambda record: seen.append(record.getMessage())
    hf_root = hf_logging.get_logger("transformers")
    hf_root.addHandler(catch)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()  # transformers' default (an import in the suite lowers it)
    try:
        with quiet_bars(), pytest.warns(UserWarning, match="a real Python warning"):
            # the bars of a save and of a GGUF conversion, quietly
            AutoModelForCausalLM.from_pretrained(str(model_dir)).save_pretrained(tmp_path / "c")
            for _ in hf_gguf.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."):
                pass
            hf_logging.get_logger("transformers.modeling_utils").warning("a real hf warning")
            warnings.warn("a real Python warning", UserWarning, stacklevel=1)
            assert hf_logging.get_verbosity() == logging.WARNING  # records are not turned down
    finally:
        hf_root.removeHandler(catch)
        hf_logging.set_verbosity(verbosity)
    err = capfd.readouterr().err
    assert not [b for b in BARS if b in err], err
    assert "a real hf warning" in seen
    # everything is switched back afterwards: the same bars show again outside the block
    assert hf_logging.is_progress_bar_enabled()
    for _ in hf_gguf.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."):
        pass
    assert "Converting and de-quantizing" in capfd.readouterr().err


def test_verbose_shows_third_party_bars(tmp_path, capfd):
    """With -v (scope logging at DEBUG) the bars are left alone."""
    import logging

    from transformers import modeling_gguf_pytorch_utils as hf_gguf

    from scope.model.gguf import quiet_bars

    scope_log = logging.getLogger("scope")
    before = scope_log.level
    scope_log.setLevel(logging.DEBUG)
    try:
        with quiet_bars():
            for _ in hf_gguf.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."):
                pass
    finally:
        scope_log.setLevel(before)
    assert "Converting and de-quantizing" in capfd.readouterr().err


def test_decoder_tables_say_what_they_do_and_stay_live(tmp_path, capfd, caplog):
    """A real extraction of two SAEs: one line per SAE before (its size, the vocabulary) and
    after (its time), and a bar with `n/2 SAEs`; without a bar, a 'still computing' line
    every heartbeat while a step runs longer than it."""
    import logging
    import re

    import torch
    from builders import TINY_TEXT, tiny_gemma3_dir
    from sae_builders import jumprelu_weights

    import scope
    from scope.pipeline.extract import extract
    from scope.pipeline.run import TablesProgress
    from scope.saes.sae import JumpReLUSAE, SAEConfig

    model = scope.load_model(str(tiny_gemma3_dir(tmp_path / "model")), device="cpu",
                             dtype=torch.float32)
    saes = [JumpReLUSAE(SAEConfig(d_in=model.cfg.d_model, d_sae=d,
                                  hook_name="blocks.1.hook_resid_post"),
                        **{k: torch.tensor(v) for k, v in
                           jumprelu_weights(model.cfg.d_model, d, seed=d).items()})
            for d in (96, 160)]
    capfd.readouterr()
    caplog.set_level(logging.INFO, logger="scope")
    extract(model, saes, list(TINY_TEXT), tmp_path / "store", tokens=128, ctx=32, batch_size=4)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("decoder")]
    names = [e["name"] for e in scope.open_store(tmp_path / "store").manifest["saes"]]
    n_vocab = min(model.cfg.d_vocab, len(model.tokenizer))
    assert lines[0] == (f"decoder tables 1/2, SAE {names[0]} (96 features): top logit "
                        f"effects over {n_vocab:,} tokens and nearest decoder neighbours")
    assert lines[2].startswith(f"decoder tables 2/2, SAE {names[1]} (160 features)")
    assert re.fullmatch(r"decoder tables 1/2, SAE \S+: done in \d+ s", lines[1])
    assert re.fullmatch(r"decoder tables 2/2, SAE \S+: done in \d+ s", lines[3])
    err = capfd.readouterr().err
    assert "1/2 SAEs" in err and "2/2 SAEs" in err

    caplog.clear()
    with TablesProgress(1, bar=False, heartbeat=0.05) as progress:
        progress.start("s", 10, 100, logits=False)
        time.sleep(0.4)  # a step longer than the heartbeat
        progress.done()
    beats = [r.getMessage() for r in caplog.records if "still computing" in r.getMessage()]
    assert 3 <= len(beats) <= 9, beats
    assert beats[0].startswith("decoder tables 1/1, SAE s: still computing")
    assert caplog.records[0].getMessage() == ("decoder tables 1/1, SAE s (10 features): "
                                              "nearest decoder neighbours")  # logits off
