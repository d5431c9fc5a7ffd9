"""Hostile `--config` files: every bad key or value is a ConfigError naming the key, the value and
the type expected, before anything is read or written (see tests/hostile.py for the harness)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hostile import Case, params, run_case

from scope.errors import ConfigError, UsageError


def _config(text: str, name: str = "c.yaml"):
    def setup(root: Path) -> None:
        (root / name).write_text(text)
        store = root / "store"  # an existing store a config mistake must never touch
        store.mkdir()
        (store / "manifest.json").write_text('{"status": "complete"}')
        (store / "data.bin").write_bytes(b"\0" * 64)
    return setup


def _extract(root: Path) -> list[str]:
    return ["extract", "--config", str(root / "c.yaml"), "--no-progress"]


def _train(root: Path) -> list[str]:
    return ["train", "--config", str(root / "c.yaml")]


def _row(id, text, fragment, argv=_extract, error=ConfigError, **kw) -> Case:
    return Case(id, argv, error, fragment, setup=_config(text), **kw)


ROWS = [
    # the data-loss case: a quoted "false" is a string, never read as true
    _row("overwrite-string-false", 'out: {store}\noverwrite: "false"\n',
         "key 'overwrite' = 'false' does not fit --overwrite: expected a YAML boolean"),
    _row("overwrite-int", "overwrite: 0\n", "expected a YAML boolean"),
    _row("tokens-list", "tokens: [1, 2]\n", "key 'tokens' = [1, 2] does not fit --tokens: "
         "expected an integer"),
    _row("ctx-float", "ctx: 12.5\n", "key 'ctx' = 12.5 does not fit --ctx: expected an integer"),
    _row("ctx-string", 'ctx: "12"\n', "got a YAML string"),
    _row("top-k-bool", "top_k: true\n", "key 'top_k' = True does not fit --top-k: expected an "
         "integer (e.g. 128), got a YAML boolean"),
    _row("checkpoint-every-string", "checkpoint_every: soon\n", "expected a number"),
    _row("sae-list-of-ints", "sae: [1, 2]\n", "(item 0) does not fit --sae"),
    _row("sae-mapping", "sae: {a: 1}\n", "got a YAML mapping"),
    # issue 19: an empty list silently meant the default (the bundled SAE)
    _row("sae-empty-list", "sae: []\n", "key 'sae' = [] is an empty list: give --sae at least "
         "one value"),
    _row("attribute-sae-empty-list", "sae: []\nprompt: p\ntarget: t\n",
         "key 'sae' = [] is an empty list", argv=lambda r: ["attribute", "--config",
                                                             str(r / "c.yaml")]),
    _row("both-spellings-of-a-flag", "top-k: 3\ntop_k: 4\n",
         "keys 'top-k' and 'top_k' both set --top-k; keep one"),
    _row("yaml-alias-bomb", "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
         "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
         "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
         "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
         "e: [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n", "alias bomb"),
    _row("yaml-deeply-nested", "ctx: " + "[" * 5000 + "]" * 5000 + "\n", "nested deeper than"),
    _row("model-int", "model: 270\n", "key 'model' = 270 does not fit --model: expected a string"),
    _row("split-not-a-choice", "split: test\n", "--split takes one of all, train, heldout"),
    _row("unknown-key-suggests", "top-kk: 3\n", "'top-kk' is not a flag of `scope extract`. "
         "Did you mean: top_k"),
    _row("non-string-key", "1: 2\n", "key 1 is not a flag"),
    _row("positional-key", "store: x\n", "positional argument of `scope dashboard`",
         argv=lambda r: ["dashboard", "--config", str(r / "c.yaml"), str(r / "store")]),
    _row("malformed-yaml", "ctx: [1\n", "not valid YAML at line 2"),
    _row("tab-indented-yaml", "a:\n\tb: 1\n", "not valid YAML at line 2"),
    _row("yaml-list-not-mapping", "- ctx\n- 12\n", "expected a mapping of flag names to values"),
    _row("yaml-scalar-not-mapping", "just text\n", "got a YAML string"),
    _row("duplicate-key", "ctx: 12\nctx: 13\n", "duplicate key 'ctx'"),
    _row("python-object-tag", "ctx: !!python/object/apply:os.system ['touch pwned']\n",
         "not valid YAML"),
    _row("config-is-a-folder", "", "the file is a folder",
         argv=lambda r: ["extract", "--config", str(r / "store")]),
    _row("config-missing", "", "does not exist",
         argv=lambda r: ["extract", "--config", str(r / "nope.yaml")]),
    Case("config-not-utf8", _extract, ConfigError, "not UTF-8 text",
         setup=lambda r: (r / "c.yaml").write_bytes(b"ctx: \xff\xfe\n")),
    _row("train-resume-string", 'resume: "no"\n', "key 'resume' = 'no' does not fit --resume",
         argv=_train),
    _row("train-d-sae-zero", "d_sae: 0\n", "OptimConfig.d_sae must be > 0, got 0", argv=_train),
    _row("train-d-sae-float", "d_sae: 1.0e3\n", "expected an integer", argv=_train),
    _row("train-betas-short", "adam_betas: [0.5]\n", "--adam-betas takes exactly 2 values",
         argv=_train),
    _row("train-betas-bool", "adam_betas: [0.0, true]\n", "(item 1) does not fit --adam-betas",
         argv=_train),
    _row("train-hook-name", "hook_name: layer 9\n", "is not a TransformerLens hook name",
         argv=_train),
    _row("train-save-dtype", "save_dtype: int8\n", "save_dtype must be one of", argv=_train),
    _row("train-unknown-key", "widht: 3\n", "'widht' is not a flag of `scope train`",
         argv=_train),
    _row("saes-layer-float", "layer: 20.0\n", "expected an integer",
         argv=lambda r: ["saes", "gemma-scope-2b-pt-res", "--config", str(r / "c.yaml")]),
    # correct behaviour: typed values are used; YAML 1.2 floats without a dot are numbers
    Case("saes-layer-and-width-from-config",
         lambda r: ["saes", "gemma-scope-2b-pt-res", "--config", str(r / "c.yaml")],
         fragment="layer_20/width_16k/average_l0_71", setup=_config("layer: 20\nwidth: 16k\n")),
    Case("null-value-keeps-default",
         lambda r: ["saes", "gemma-scope-2b-pt-res", "--config", str(r / "c.yaml")],
         fragment="layer_20/width_16k", setup=_config("layer: 20\nwidth: null\n")),
]


@pytest.mark.parametrize("case", params(ROWS))
def test_hostile_config(case: Case, tmp_path, capsys, monkeypatch):
    real = case.setup

    def setup(root: Path) -> None:
        real(root)
        cfg = root / "c.yaml"
        if cfg.is_file() and b"{store}" in cfg.read_bytes():
            cfg.write_text(cfg.read_text().replace("{store}", str(root / "store")))

    case.setup = setup
    run_case(case, tmp_path, capsys, monkeypatch)


def _parse(tmp_path: Path, text: str, *argv: str):
    """The dataclass the command runs with, from `argv[0] --config FILE argv[1:]`."""
    import scope.cli.main as cli

    (tmp_path / "c.yaml").write_text(text)
    _, configs, _ = cli.parse([argv[0], "--config", str(tmp_path / "c.yaml"), *argv[1:]])
    return configs[0] if len(configs) == 1 else configs


def test_config_values_reach_the_command_with_their_types(tmp_path):
    args = _parse(tmp_path, "sae: bundled\nctx: 64\nout: runs/x\ncheckpoint_every: 1e2\n"
                  "overwrite: false\n", "extract")
    assert args.sae == ["bundled"]  # one string is a one-element list
    assert args.ctx == 64 and args.out == Path("runs/x") and args.checkpoint_every == 100.0
    assert args.overwrite is False
    # flags on the command line win; a repeated flag replaces the file's list
    args = _parse(tmp_path, "sae: [a, b]\nctx: 64\n", "extract", "--sae", "c", "--ctx", "32")
    assert args.sae == ["c"] and args.ctx == 32
    args = _parse(tmp_path, "sae: [a, b]\n", "extract", "--sae", "c", "--sae", "d")
    assert args.sae == ["c", "d"]
    # a required flag may come from the file
    args = _parse(tmp_path, "feature: ['3:2.5']\nprompt: hi\n", "steer")
    assert args.feature == [(3, 2.5)] and args.prompt == "hi"
    with pytest.raises(ConfigError, match="expected INDEX:STRENGTH"):
        _parse(tmp_path, "feature: ['x:2']\nprompt: hi\n", "steer")
    with pytest.raises(UsageError, match="required: --feature"):  # still required when the file does not give it
        _parse(tmp_path, "prompt: hi\n", "steer")
    by_type = {type(c).__name__: c for c in _parse(tmp_path, "lr: 7e-5\nepochs: 2\n"
                                                   "adam_betas: [0, 0.99]\n", "train")}
    optim = by_type["OptimConfig"]
    assert optim.lr == 7e-5 and optim.epochs == 2.0 and optim.adam_betas == (0.0, 0.99)
