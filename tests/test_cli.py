"""The `scope` command's surface: every flag users had, help with a real example, bounds on every
number, `--config` values typed like the flags, `scope saes` in numeric order, `scope steer`
wrapped at word boundaries. (Hostile inputs: tests/test_hostile_cli.py, _config.py.)"""

from __future__ import annotations

import os
import re
import signal
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import scope.cli.main as cli
from scope.cli.common import COMMANDS, command
from scope.cli.models import sae_order, width_value
from scope.cli.steer import side_by_side
from scope.errors import ConfigError, UsageError

#: the flags and positionals of every command before the jsonargparse rewrite (none may go)
FLAGS = {
    "models": ["--cache"],
    "saes": ["--layer", "--width", "release"],
    "extract": ["--batch-size", "--checkpoint-every", "--corpus", "--ctx", "--device", "--dry-run", "--model",
                "--no-progress", "--out", "--overwrite", "--sae", "--shard", "--split",
                "--text-field", "--tokens", "--top-k"],
    "merge": ["--out", "--overwrite", "stores"],
    "eval": ["--batch-size", "--corpus", "--ctx", "--json", "--model", "--sae", "--saebench-json",
             "--split", "--tokens"],
    "steer": ["--feature", "--max-new-tokens", "--mode", "--model", "--prompt", "--relative",
              "--sae", "--seed", "--temperature"],
    "attribute": ["--ablation-k", "--dry-run", "--edge-threshold", "--graph", "--max-feature-nodes", "--mode",
                  "--model", "--node-threshold", "--prompt", "--sae", "--store", "--target",
                  "--top", "--vs"],
    "dashboard": ["--host", "--open-browser", "--port", "store"],
    "train": ["--adam-betas", "--bandwidth", "--batch-size", "--capture-batch-size",
              "--checkpoint-every", "--corpus", "--ctx", "--d-sae", "--dead-coefficient",
              "--dead-steps", "--epochs", "--eval-lm-windows", "--eval-tokens", "--hook-name",
              "--l0-coefficient", "--l0-warmup-steps", "--log-every", "--lr",
              "--lr-decay-fraction", "--lr-warmup-steps", "--model", "--no-resume", "--out",
              "--release", "--resume", "--run-dir", "--sae-id", "--save-dtype", "--seed",
              "--sparse-below", "--spike-clip", "--target-l0", "--threads", "--threshold-init",
              "--train-tokens"],
    "demo": ["--batch-size", "--ctx", "--host", "--no-browser", "--no-dashboard", "--out",
             "--port", "--tokens"],
    "labels": ["file", "store"],
    "explain": ["--endpoint", "--features", "--force", "--judge-model", "--limit", "--model",
                "--sae", "store"],
    "export": ["--batch-size", "--out", "--sae", "store"],
    "plan": ["--batch-size", "--ctx", "--device", "--dtype", "--json", "--max-feature-nodes",
             "--max-memory", "--model", "--out", "--sae", "--task", "--tokens", "--top-k"],
}


def _help(capsys, *argv: str) -> str:
    capsys.readouterr()
    assert cli.main([*argv, "--help"]) == 0
    return capsys.readouterr().out


def test_scope_help_lists_every_command_in_data_flow_order(capsys):
    text = _help(capsys)
    listed = [name for name in cli.ORDER if re.search(rf"^\s+{name}\s", text, re.M)]
    assert listed == cli.ORDER == [n for n in cli.ORDER if n in FLAGS]
    assert sorted(FLAGS) == sorted(cli.COMMANDS)


@pytest.mark.parametrize("name", sorted(FLAGS))
def test_every_command_keeps_its_flags_and_shows_a_real_example(name, capsys):
    text = _help(capsys, name)
    for flag in [*FLAGS[name], "--config", "--verbose"]:
        assert re.search(rf"(^|[\s\[,]){re.escape(flag)}\b", text), f"{name}: {flag} missing"
    example = text.split("example:\n", 1)[1].splitlines()[0].strip()
    assert example.startswith(f"scope {name}")
    # the example parses as it is written (up to a shell comment); nothing runs
    argv = [a.strip('"') for a in re.findall(r'"[^"]*"|\S+', example.split("  #")[0])][1:]
    cmd, configs, _ = cli.parse(argv)
    assert cmd is not None and cmd.name == name and configs


def test_field_docstrings_are_the_help(capsys):
    from scope.cli.parser import flags

    for name, cmd in cli.COMMANDS.items():
        text = " ".join(_help(capsys, name).split())
        for config in cmd.configs:
            for f in flags(config):
                assert f.help, f"{name}: field {f.name} has no docstring"
                assert f.help[:40] in text, f"{name}: help of {f.name} not shown"


BOUNDS = [
    (["attribute", "--prompt", "p", "--target", "t", "--top", "-5"], "--top: '-5' is too small"),
    (["attribute", "--prompt", "p", "--target", "t", "--top", "0"], "need a positive integer"),
    (["attribute", "--prompt", "p", "--target", "t", "--max-feature-nodes", "-3"],
     "--max-feature-nodes: '-3' is too small"),
    (["attribute", "--prompt", "p", "--target", "t", "--ablation-k", "-1"], "--ablation-k"),
    (["attribute", "--prompt", "p", "--target", "t", "--node-threshold", "1.5"],
     "'1.5' is too big: need a fraction in [0, 1]"),
    (["attribute", "--prompt", "p", "--target", "t", "--edge-threshold", "nan"],
     "not a finite number"),
    (["attribute", "--prompt", "p", "--target", "t", "--top", "2.5"], "'2.5' is not a positive"),
    (["attribute", "--prompt", "p", "--target", "t", "--graph", "."], "is a folder"),
    (["explain", "s", "--model", "m", "--limit", "0"], "--limit: '0' is too small"),
    (["explain", "s", "--model", "m", "--features", "5-2"], "ranges low-high"),
    (["explain", "s", "--model", "m", "--features", "-3"], "--features"),
    (["export", "neuronpedia", "s", "--out", "o", "--batch-size", "0"], "--batch-size"),
    (["demo", "--port", "0"], "need a TCP port"),
    (["demo", "--tokens", "-1"], "--tokens: '-1' is too small"),
    (["eval", "--batch-size", "0"], "--batch-size"),
    (["steer", "--feature", "1:1", "--prompt", "p", "--seed", "-1"], "--seed"),
    (["saes", "--layer", "x"], "--layer"),
    (["labels", "export", "f", "s"], "invalid choice: 'export'"),
]


@pytest.mark.parametrize("argv,fragment", BOUNDS, ids=[" ".join(a[:1] + a[-2:]) for a, _ in BOUNDS])
def test_bounds_are_usage_errors_before_anything_runs(argv, fragment, capsys):
    with pytest.raises(UsageError, match=re.escape(fragment)):
        cli.parse(argv)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"scope {argv[0]}: error: " in err and fragment in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error:" in line]) == 1


def test_the_same_bounds_apply_to_config_values(tmp_path):
    cfg = tmp_path / "c.yaml"
    for text, fragment in [("top: -5\n", "'-5' is too small"),
                           ("max_feature_nodes: -3\n", "'-3' is too small"),
                           ("node_threshold: 2\n", "is too big"),
                           ("top: 1.0\n", "expected an integer")]:
        cfg.write_text("prompt: p\ntarget: t\n" + text)
        with pytest.raises(ConfigError, match=re.escape(fragment)):
            cli.parse(["attribute", "--config", str(cfg)])
    cfg.write_text("prompt: p\ntarget: ' Paris'\ntop: 3\nvs: ' London'\n")
    _, (a,), _ = cli.parse(["attribute", "--config", str(cfg), "--top", "4"])
    assert (a.top, a.target, a.vs) == (4, " Paris", " London")  # leading spaces kept


def test_command_line_strings_are_taken_verbatim():
    """jsonargparse would read a string flag as YAML; a token or prompt must stay as typed."""
    _, (a,), _ = cli.parse(["attribute", "--prompt", "[1, 2]: x", "--target", " Paris",
                            "--vs", "true"])
    assert (a.prompt, a.target, a.vs) == ("[1, 2]: x", " Paris", "true")
    _, (s,), _ = cli.parse(["steer", "--prompt", "null", "--feature", "3:2", "--feature", "4"])
    assert s.prompt == "null" and s.feature == [(3, 2.0), (4, 1.0)]


@pytest.mark.parametrize("text,fragment", [
    ("a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
     "e: [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n", "alias bomb"),
    ("ctx: " + "[" * 40 + "]" * 40 + "\n", "nested deeper than"),
    ("ctx: &x [1, *x]\n", "refers to itself"),
    ("top-k: 3\ntop_k: 4\n", "keys 'top-k' and 'top_k' both set --top-k"),
])
def test_config_shapes_no_flag_file_has_are_refused(tmp_path, text, fragment):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        cli.parse(["extract", "--config", str(tmp_path / "c.yaml")])


def test_config_flag_values_and_dashes(tmp_path):
    (tmp_path / "c.yaml").write_text("top-k: 7\nno_progress: true\nshard: 1/4\nsae: x\n")
    _, (e,), _ = cli.parse(["extract", "--config", str(tmp_path / "c.yaml"), "--out", "o"])
    assert (e.top_k, e.no_progress, e.shard, e.sae, e.out) == (7, True, "1/4", ["x"], Path("o"))
    _, (e,), _ = cli.parse(["extract", "--top-k", "3", "--sae", "y", "--config",
                            str(tmp_path / "c.yaml")])
    assert (e.top_k, e.sae) == (3, ["y"])  # the command line wins, before --config too
    _, (_, _, run, _), _ = cli.parse(["train", "--no-resume"])
    assert run.resume is False


def test_widths_and_l0_sort_as_numbers():
    assert [width_value(w) for w in ("16k", "65k", "262k", "1m")] == [16e3, 65e3, 262e3, 1e6]
    rows = [{"id": f"layer_3/width_{w}/average_l0_{l0}", "layer": 3, "width": w, "l0": l0}
            for w in ("1m", "262k", "16k", "65k") for l0 in (120, 9, 41)]
    got = [(r["width"], r["l0"]) for r in sorted(rows, key=sae_order)]
    assert got == [(w, l0) for w in ("16k", "65k", "262k", "1m") for l0 in (9, 41, 120)]


def test_saes_lists_a_release_in_numeric_order(capsys):
    assert cli.main(["saes", "gemma-scope-2b-pt-res", "--layer", "20"]) == 0
    ids = re.findall(r"^layer_20/width_(\w+)/average_l0_(\d+)", capsys.readouterr().out, re.M)
    keys = [(width_value(w), int(l0)) for w, l0 in ids]
    assert len(keys) > 3 and keys == sorted(keys)
    assert len({w for w, _ in ids}) > 1  # several widths, so the order was tested


def test_steer_columns_wrap_at_word_boundaries():
    left = "The weather is " + " ".join(f"word{i}" for i in range(40))
    right = "The weather is sunny-and-warm " + "x" * 60 + " end"
    lines = side_by_side(left, right, 20)
    cols = [(line[:20].rstrip(), line[23:]) for line in lines]
    assert all(line[20:22] == " |" for line in lines)
    assert " ".join(a for a, _ in cols).split() == left.split()
    assert " ".join(b for _, b in cols if b).split() == right.split()  # no word cut
    assert cols[0][0] == textwrap.wrap(left, 20)[0]


@dataclass
class _Signal:
    """Send this process a signal (a test-only command)."""

    signal: str = "SIGTERM"
    """signal name"""


@pytest.mark.parametrize("name,code,word", [("SIGTERM", 143, "terminated"),
                                            ("SIGINT", 130, "interrupted")])
def test_signals_stop_a_command_with_their_exit_status(name, code, word, capsys):
    def run(cfg: _Signal) -> int:
        os.kill(os.getpid(), getattr(signal, cfg.signal))
        time.sleep(5)
        return 0

    command("signal-test", _Signal, example="scope signal-test --signal SIGINT")(run)
    try:
        t = time.time()
        assert cli.main(["signal-test", "--signal", name]) == code
        assert time.time() - t < 4
    finally:
        del COMMANDS["signal-test"]
    assert capsys.readouterr().err.strip() == f"scope signal-test: {word}"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed again


def test_the_example_command_of_docs_cli_md_registers_and_parses(tmp_path, monkeypatch):
    import importlib

    text = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    (tmp_path / "docs_cli_example.py").write_text(text.split("```python\n", 1)[1].split("```")[0])
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        importlib.import_module("docs_cli_example")
        cmd, (cfg,), _ = cli.parse(["count", "runs/l20", "--at-least", "10"])
        assert cmd.name == "count" and (cfg.store, cfg.at_least) == ("runs/l20", 10)
        with pytest.raises(UsageError, match="--at-least: '0' is too small"):
            cli.parse(["count", "runs/l20", "--at-least", "0"])
    finally:
        COMMANDS.pop("count", None)
        sys.modules.pop("docs_cli_example", None)


def test_attribute_defaults_to_the_bundled_transcoders_and_asks_for_sae_elsewhere():
    from scope.cli.attribute import default_saes
    from scope.errors import UsageError
    from scope.saes.bundled import expand_sae_specs

    specs = expand_sae_specs(default_saes("bundled"))
    assert specs == [f"bundled/transcoders/layer_{L}" for L in range(18)]
    with pytest.raises(UsageError, match="--sae: no default dictionaries for --model 'gemma-2-2b'"):
        default_saes("gemma-2-2b")

