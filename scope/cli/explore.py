"""`scope labels`, `scope explain`, `scope export`: naming and sharing features.

Each is a thin shell over `scope.explore.neuronpedia` and `scope.explore.explain`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from scope.cli.common import command, positional, say
from scope.cli.flags import NON_NEGATIVE, POSITIVE, SEED, Bound, Check, feature_list
from scope.errors import ScopeError

log = logging.getLogger("scope")


#: most feature indices one --features may name (wider than any SAE; refused before expanding)
MAX_FEATURES = 1 << 24


def bounded_feature_list(text: str) -> list[int]:
    """`feature_list`, refusing a range that names more than MAX_FEATURES indices before it is
    expanded (`0-10000000000` would otherwise fill the memory)."""
    import argparse

    total = 0
    for part in (p.strip() for p in text.split(",")):
        lo, sep, hi = part.partition("-")
        if sep and lo.strip().isdigit() and hi.strip().isdigit():
            total += max(0, int(hi) - int(lo) + 1)
        else:
            total += 1
        if total > MAX_FEATURES:
            raise argparse.ArgumentTypeError(
                f"{text!r} names more than {MAX_FEATURES:,} features; no SAE is that wide")
    return feature_list(text)


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
    """Neuronpedia explanations: a batch-N.jsonl.gz, .jsonl or JSON list file, a folder of them,
    or a quoted glob"""
    store: Path = positional()
    """feature store folder"""
    replace_scored: bool = False
    """replace explanations in the store that carry a score (default: keep them)"""
    neuronpedia_id: str | None = None
    """MODEL/SOURCE whose rows to import (a row's modelId/layer, e.g.
    gemma-3-270m/5-gemmascope-2-res-16k), for an SAE without a Neuronpedia id such as the demo's"""
    sae: str | None = None
    """the store's SAE those rows belong to (default: its only SAE)"""


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
    features: Annotated[list[int], Check(bounded_feature_list)] | None = None
    """indices and ranges, e.g. 0-99,1234 (default: every feature that fired)"""
    limit: POSITIVE | None = None
    """explain at most this many features"""
    force: bool = False
    """redo features already explained with this model and prompt, and replace scored
    explanations from elsewhere"""
    min_examples: POSITIVE = 12
    """kept activating contexts a feature needs to be explained and scored (else skipped)"""
    negatives: NON_NEGATIVE = 10
    """verified non-activating corpus contexts per feature"""
    hard_negatives: NON_NEGATIVE = 0
    """verified non-activating contexts from decoder neighbours' top contexts"""
    no_verify: bool = False
    """do not load the store's model and SAE to verify negatives (scores say 'unverified')"""
    no_fuzz: bool = False
    """skip the fuzzing scorer"""
    timeout: Annotated[float, Bound(float, 0.001, what="a number of seconds > 0")] = 120.0
    """seconds one request to the endpoint may take, answer included"""
    seed: SEED = 0
    """seed of every random choice"""


@dataclass(kw_only=True)
class Export:
    """Export a store in Neuronpedia's upload layout (SAEDashboard batch JSON)."""

    target: Literal["neuronpedia"] = positional()
    """export target (neuronpedia)"""
    store: Path = positional()
    """feature store folder"""
    out: Path
    """output folder"""
    sae: str | None = None
    """export this SAE only (default: all)"""
    batch_size: POSITIVE = 128
    """features per file (at most 128 for --format upload)"""
    format: Literal["saedashboard", "upload"] = "saedashboard"
    """saedashboard: SAEDashboard 0.8.0 batch folders, for Neuronpedia's converter; upload: the
    bodies the neuronpedia client's upload_batch posts"""
    no_logit_histograms: bool = False
    """do not load the store's model (no logit histograms nor neuron alignment tables)"""
    allow_partial: bool = False
    """export a store whose extraction has not finished"""


@command("labels", Labels, example="scope labels import explanations/batch-0.jsonl.gz runs/l20")
def run_labels(args: Labels) -> int:
    from scope.explore.neuronpedia import import_explanations
    from scope.store import open_store

    report = import_explanations(args.file, open_store(args.store),
                                 replace_scored=args.replace_scored,
                                 neuronpedia_id=args.neuronpedia_id, sae=args.sae)
    say(f"read {report.rows:,} rows from {len(report.files)} file(s)")
    for name, n in report.imported.items():
        say(f"imported {n:,} explanations for {name}")
    for source, n in report.unmatched_sources.items():
        say(f"skipped {n:,} explanations of {source}: no SAE in the store has that "
            "Neuronpedia id")
    if report.out_of_range:
        say(f"skipped {report.out_of_range:,} explanations of features past the SAE's width")
    if report.duplicates_dropped:
        say(f"dropped {report.duplicates_dropped:,} duplicate explanations of a feature (kept "
            "the best-scored, else the first)")
    if report.kept_scored:
        say(f"kept {report.kept_scored:,} scored explanations already in the store "
            "(--replace-scored replaces them)")
    return 0


@command("explain", Explain,
         example="scope explain runs/l20 --endpoint http://127.0.0.1:8000/v1 --model "
         "Qwen/Qwen2.5-7B-Instruct --features 0-99")
def run_explain(args: Explain) -> int:
    from scope.explore.explain import ChatEndpoint, ExplainConfig, LocalChatModel, explain_store
    from scope.explore.sampling import ScoringConfig
    from scope.store import open_store

    store = open_store(args.store)
    sae = _pick_sae(store, args.sae)
    if args.endpoint:
        explainer = ChatEndpoint(args.endpoint, args.model, timeout=args.timeout)
        judge = (ChatEndpoint(args.endpoint, args.judge_model, timeout=args.timeout)
                 if args.judge_model else explainer)
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
    cfg = ExplainConfig(seed=args.seed, scoring=ScoringConfig(
        min_examples=args.min_examples, n_negatives=args.negatives, n_hard=args.hard_negatives,
        verify=not args.no_verify, fuzz=not args.no_fuzz))
    stats = explain_store(store, sae, explainer, judge, features=features, force=args.force,
                          cfg=cfg)

    def fmt(x):
        return "n/a" if x is None else f"{x:.3f}"

    say(f"{sae}: explained {stats['explained']:,}, already done {stats['skipped']:,}, "
        f"kept (scored elsewhere) {stats['skipped_scored_by_other']:,}, below min_examples "
        f"{len(stats['skipped_reasons']):,}, failed {stats['failed']:,}, bad answers "
        f"{len(stats['errors']):,}; mean detection {fmt(stats['mean_score'])}, fuzzing "
        f"{fmt(stats['mean_fuzz_score'])} (0.5 = chance)")
    for i, why in list(stats["errors"].items())[:5]:
        say(f"  feature {i}: {why}")
    return 0


@command("export", Export, example="scope export neuronpedia runs/l20 --out np_export")
def run_export(args: Export) -> int:
    from scope.explore.neuronpedia import export_neuronpedia
    from scope.store import open_store

    files = export_neuronpedia(open_store(args.store), args.out, sae=args.sae,
                               batch_size=args.batch_size, format=args.format,
                               logit_histograms=not args.no_logit_histograms,
                               allow_partial=args.allow_partial)
    say(f"wrote {len(files)} {'upload' if args.format == 'upload' else 'batch'} files under "
        f"{args.out}")
    return 0
