"""`scope labels`, `scope explain`, `scope export`: naming and sharing features.

Each is a thin shell over `scope.explore.neuronpedia` and `scope.explore.explain`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from scope.cli.common import command, positional, say
from scope.cli.flags import POSITIVE, Check, feature_list
from scope.errors import ScopeError

log = logging.getLogger("scope")


def _pick_sae(store, name: str | None) -> str:  # noqa: ANN001
    if name is None:
        return store.sae_names[0]
    store.sae_info(name)  # raises StoreError with suggestions
    return name


@dataclass
class Labels:
    """Import feature explanations (from Neuronpedia) into a store."""

    action: Literal["import"] = positional()
    """what to do (import)"""
    file: Path = positional()
    """Neuronpedia explanation export (JSON list)"""
    store: Path = positional()
    """feature store folder"""


@dataclass(kw_only=True)
class Explain:
    """Explain features with an LLM and score each explanation (detection, balanced accuracy)."""

    store: Path = positional()
    """feature store folder"""
    endpoint: str | None = None
    """OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 (vLLM, llama.cpp server, Ollama,
    OpenAI); the key comes from $OPENAI_API_KEY. Without it, --model is a local transformers
    model directory"""
    model: str
    """model name at the endpoint, or a local transformers chat model directory"""
    judge_model: str | None = None
    """scoring model at the same endpoint (default: --model)"""
    sae: str | None = None
    """SAE name in the store (default: the first)"""
    features: Annotated[list[int], Check(feature_list)] | None = None
    """indices and ranges, e.g. 0-99,1234 (default: every feature that fired)"""
    limit: POSITIVE | None = None
    """explain at most this many features"""
    force: bool = False
    """redo features already explained with this model and prompt"""


@dataclass(kw_only=True)
class Export:
    """Export a store in Neuronpedia's upload layout (SAEDashboard batch JSON)."""

    format: Literal["neuronpedia"] = positional()
    """export format (neuronpedia)"""
    store: Path = positional()
    """feature store folder"""
    out: Path
    """output folder"""
    sae: str | None = None
    """export this SAE only (default: all)"""
    batch_size: POSITIVE = 128
    """features per batch file"""


@command("labels", Labels, example="scope labels import explanations.json runs/l20")
def run_labels(args: Labels) -> int:
    from scope.explore.neuronpedia import import_explanations
    from scope.store import open_store

    report = import_explanations(args.file, open_store(args.store))
    for name, n in report.imported.items():
        say(f"imported {n:,} explanations for {name}")
    for source, n in report.unmatched_sources.items():
        say(f"skipped {n:,} explanations of {source}: no SAE in the store has that "
              "Neuronpedia id")
    if report.skipped:
        say(f"skipped {report.skipped:,} malformed or out-of-range entries")
    return 0


@command("explain", Explain,
         example="scope explain runs/l20 --endpoint http://127.0.0.1:8000/v1 --model "
         "Qwen/Qwen2.5-7B-Instruct --features 0-99")
def run_explain(args: Explain) -> int:
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
    say(f"{sae}: explained {stats['explained']:,}, already done {stats['skipped']:,}, "
          f"failed {stats['failed']:,}; mean detection score "
          f"{'n/a' if mean is None else f'{mean:.3f}'} (0.5 = chance)")
    return 0


@command("export", Export, example="scope export neuronpedia runs/l20 --out np_export")
def run_export(args: Export) -> int:
    from scope.explore.neuronpedia import export_neuronpedia
    from scope.store import open_store

    files = export_neuronpedia(open_store(args.store), args.out, sae=args.sae,
                               batch_size=args.batch_size)
    say(f"wrote {len(files)} batch files under {args.out}")
    return 0
