"""CLI subcommands for naming and sharing features: `labels`, `explain`, `export`.

Registered by `scope/cli.py` through `register`; each is a thin shell over `scope.store.labels`,
`scope.explore.explain` and `scope.explore.neuronpedia`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from scope.cli.checks import POSITIVE
from scope.errors import ScopeError

log = logging.getLogger("scope")


def _say(text: str) -> None:
    """A result line for the user (the CLI's output, not a log message)."""
    sys.stdout.write(text + "\n")


def _features(text: str) -> list[int]:
    """Parse `0-99,1234` into a list of indices."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            out += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{part!r}: give feature indices and ranges, e.g. 0-99,1234") from None
    return out


def _pick_sae(store, name: str | None) -> str:
    if name is None:
        return store.sae_names[0]
    store.sae_info(name)  # raises StoreError with suggestions
    return name


def register(subcommand, subparser) -> None:
    """Add the subcommands with cli.py's helpers (`subcommand` registers, `subparser` builds)."""

    @subcommand
    def _add_labels(sub) -> None:
        p = subparser(sub, "labels", "Import feature explanations (from Neuronpedia) into a store.",
                      "scope labels import explanations.json runs/l20", _run_labels)
        p.add_argument("action", choices=["import"], help="what to do (import)")
        p.add_argument("file", type=Path, help="Neuronpedia explanation export (JSON list)")
        p.add_argument("store", type=Path, help="feature store folder")

    @subcommand
    def _add_explain(sub) -> None:
        p = subparser(
            sub, "explain",
            "Explain features with an LLM and score each explanation (detection, balanced "
            "accuracy).",
            "scope explain runs/l20 --endpoint http://127.0.0.1:8000/v1 --model "
            "Qwen/Qwen2.5-7B-Instruct --features 0-99", _run_explain)
        p.add_argument("store", type=Path, help="feature store folder")
        p.add_argument("--endpoint", help="OpenAI-compatible base URL, e.g. "
                       "http://127.0.0.1:8000/v1 (vLLM, llama.cpp server, Ollama, OpenAI); the "
                       "key comes from $OPENAI_API_KEY. Without it, --model is a local "
                       "transformers model directory")
        p.add_argument("--model", required=True, help="model name at the endpoint, or a local "
                       "transformers chat model directory")
        p.add_argument("--judge-model", help="scoring model at the same endpoint (default: "
                       "--model)")
        p.add_argument("--sae", help="SAE name in the store (default: the first)")
        p.add_argument("--features", type=_features, help="indices and ranges, e.g. 0-99,1234 "
                       "(default: every feature that fired)")
        p.add_argument("--limit", type=POSITIVE, help="explain at most this many features")
        p.add_argument("--force", action="store_true",
                       help="redo features already explained with this model and prompt")

    @subcommand
    def _add_export(sub) -> None:
        p = subparser(sub, "export", "Export a store in Neuronpedia's upload layout "
                      "(SAEDashboard batch JSON).",
                      "scope export neuronpedia runs/l20 --out np_export", _run_export)
        p.add_argument("format", choices=["neuronpedia"], help="export format (neuronpedia)")
        p.add_argument("store", type=Path, help="feature store folder")
        p.add_argument("--out", type=Path, required=True, help="output folder")
        p.add_argument("--sae", help="export this SAE only (default: all)")
        p.add_argument("--batch-size", type=POSITIVE, default=128, help="features per batch file")


def _run_labels(args) -> int:
    from scope.explore.neuronpedia import import_explanations
    from scope.store import open_store

    report = import_explanations(args.file, open_store(args.store))
    for name, n in report.imported.items():
        _say(f"imported {n:,} explanations for {name}")
    for source, n in report.unmatched_sources.items():
        _say(f"skipped {n:,} explanations of {source}: no SAE in the store has that "
              "Neuronpedia id")
    if report.skipped:
        _say(f"skipped {report.skipped:,} malformed or out-of-range entries")
    return 0


def _run_explain(args) -> int:
    from scope.explore.explain import ChatEndpoint, LocalChatModel, explain_store
    from scope.store import open_store

    store = open_store(args.store)
    sae = _pick_sae(store, args.sae)
    if args.endpoint:
        explainer = ChatEndpoint(args.endpoint, args.model)
        judge = ChatEndpoint(args.endpoint, args.judge_model) if args.judge_model else explainer
    else:
        if not Path(args.model).is_dir():
            raise ScopeError(f"--model {args.model}: without --endpoint, give a local "
                             "transformers model directory")
        explainer = LocalChatModel(args.model)
        judge = LocalChatModel(args.judge_model) if args.judge_model else explainer
    features = args.features
    if args.limit is not None:
        import numpy as np

        pool = features if features is not None else np.flatnonzero(store.firing_counts(sae) > 0)
        features = [int(i) for i in pool][: args.limit]
    stats = explain_store(store, sae, explainer, judge, features=features, force=args.force)
    mean = stats["mean_score"]
    _say(f"{sae}: explained {stats['explained']:,}, already done {stats['skipped']:,}, "
          f"failed {stats['failed']:,}; mean detection score "
          f"{'n/a' if mean is None else f'{mean:.3f}'} (0.5 = chance)")
    return 0


def _run_export(args) -> int:
    from scope.explore.neuronpedia import export_neuronpedia
    from scope.store import open_store

    files = export_neuronpedia(open_store(args.store), args.out, sae=args.sae,
                               batch_size=args.batch_size)
    _say(f"wrote {len(files)} batch files under {args.out}")
    return 0
