"""Neuronpedia in both directions: import its explanations, export a store for upload.

Import reads the JSON list Neuronpedia's explanation export returns (one object per
explanation: `modelId`, `layer` as the source id such as `20-gemmascope-res-16k`, `index`,
`description`, `explanationModelName`, ...) and matches each entry to the store's SAE whose
Neuronpedia id is `modelId/layer`. Export writes SAEDashboard's per-batch JSON layout
(`batch-N.json`: `model_id`, `layer`, `sae_set`, `features`, each feature with its activation
examples grouped by bins, positive/negative logits, `frac_nonzero` and the activation
histogram), the layout Neuronpedia's upload accepts. Both sit above the store: they read it
with its public API and write only their own files.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scope.base.atomic import atomic_write_text
from scope.errors import StoreError
from scope.store import labels as L

log = logging.getLogger(__name__)

BATCH_GLOB = "batch-*.json"
#: bin fields SAEDashboard gives the "top activations" group
TOP_BIN = (-1.0, -1.0)


@dataclass
class ImportReport:
    """What `import_explanations` did: counts per SAE and the entries it could not place."""

    imported: dict[str, int] = field(default_factory=dict)
    unmatched_sources: dict[str, int] = field(default_factory=dict)
    skipped: int = 0


def _source_id(npid: str) -> tuple[str, str] | None:
    """`gemma-2-2b/20-gemmascope-res-16k` -> ("gemma-2-2b", "20-gemmascope-res-16k")."""
    parts = str(npid).strip("/").split("/")
    return (parts[0], parts[1]) if len(parts) == 2 and all(parts) else None


def import_explanations(file: str | os.PathLike, store) -> ImportReport:
    """Import a Neuronpedia explanation export into the store's labels file.

    Args:
        file: the JSON list Neuronpedia exported.
        store: an open store; SAEs are matched by their Neuronpedia id (`modelId/layer`).

    Returns:
        An `ImportReport`. Raises `StoreError` when the file is not such an export or when no
        entry matches any SAE of the store (the message lists both sides' ids).
    """
    path = Path(file)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreError(f"{path} is not readable JSON ({exc}); pass the file Neuronpedia's "
                         "explanation export returned") from exc
    if isinstance(entries, dict) and isinstance(entries.get("explanations"), list):
        entries = entries["explanations"]
    if not isinstance(entries, list):
        raise StoreError(f"{path}: expected a JSON list of explanations (modelId, layer, index, "
                         "description), got " + type(entries).__name__)
    by_source = {}
    for name in store.sae_names:
        sid = _source_id(store.sae_info(name).get("neuronpedia_id") or "")
        if sid:
            by_source[sid] = name
    report = ImportReport()
    found: dict[str, dict[int, L.Explanation]] = {}
    for e in entries:
        if not isinstance(e, dict):
            report.skipped += 1
            continue
        key = (str(e.get("modelId", "")), str(e.get("layer", "")))
        text = e.get("description")
        try:
            index = int(e.get("index"))
        except (TypeError, ValueError):
            report.skipped += 1
            continue
        if not isinstance(text, str) or not text.strip():
            report.skipped += 1
            continue
        name = by_source.get(key)
        if name is None:
            report.unmatched_sources["/".join(key)] = report.unmatched_sources.get(
                "/".join(key), 0) + 1
            continue
        if not 0 <= index < store.n_features(name):
            report.skipped += 1
            continue
        model = str(e.get("explanationModelName") or e.get("typeName") or "unknown")
        found.setdefault(name, {})[index] = L.Explanation(
            text=text.strip(), score=_score(e), explainer=f"neuronpedia:{model}",
            source="neuronpedia")
    if not found:
        have = ", ".join("/".join(k) for k in by_source) or "none (no SAE has a Neuronpedia id)"
        got = ", ".join(sorted(report.unmatched_sources)) or "none"
        raise StoreError(f"{path}: no explanation matches an SAE of store {store.path}; the "
                         f"file's sources: {got}; the store's Neuronpedia ids: {have}")
    labels = L.Labels(store.path)
    for name, items in found.items():
        labels.update(name, items)
        report.imported[name] = len(items)
    labels.save()
    return report


def _score(entry: dict) -> float | None:
    """A score in [0, 1] if the entry carries one (Neuronpedia's `scores` list or `score`)."""
    cand = entry.get("score")
    scores = entry.get("scores")
    if cand is None and isinstance(scores, list) and scores:
        first = scores[0]
        cand = first.get("value") if isinstance(first, dict) else first
    try:
        value = float(cand)
    except (TypeError, ValueError):
        return None
    return value if 0.0 <= value <= 1.0 else None


# ---------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------


def _layer_and_set(info: dict, sae_name: str) -> tuple[str, int, str]:
    """(model_id, layer, sae_set) for the batch header, from the Neuronpedia id when there is
    one, else from the hook name and the SAE's name."""
    sid = _source_id(info.get("neuronpedia_id") or "")
    if sid:
        m = re.match(r"^(\d+)-(.+)$", sid[1])
        if m:
            return sid[0], int(m.group(1)), m.group(2)
    m = re.search(r"blocks\.(\d+)\.", str(info.get("hook_name", "")))
    model = str(info.get("model_name") or "model").split("/")[-1]
    slug = re.sub(r"[^a-z0-9]+", "-", sae_name.lower()).strip("-") or "sae"
    return model, int(m.group(1)) if m else 0, f"scope-{slug}"


def _r(values) -> list[float]:
    return [round(float(v), 3) for v in values]


def feature_dict(feat, n_prompts: int, ctx: int, dataset: str) -> dict:
    """One feature in SAEDashboard's Neuronpedia layout."""
    counts, edges = feat.histogram
    counts = np.asarray(counts, dtype=float)
    edges = np.asarray(edges, dtype=float)
    centres = np.sqrt(edges[:-1] * edges[1:]) if edges[0] > 0 else (edges[:-1] + edges[1:]) / 2
    nz = counts > 0
    acts = [{"bin_min": TOP_BIN[0], "bin_max": round(float(feat.max_activation), 3),
             "bin_contains": TOP_BIN[1], "tokens": list(e.tokens), "values": _r(e.activations)}
            for e in feat.top_examples]
    total = max(1, int(feat.firing_count))
    for band in getattr(feat, "band_examples", None) or []:
        inside = counts[(centres >= band.low) & (centres < band.high)].sum()
        for e in band.examples:
            acts.append({"bin_min": round(float(band.low), 3), "bin_max": round(float(band.high), 3),
                         "bin_contains": round(float(inside) / total, 4),
                         "tokens": list(e.tokens), "values": _r(e.activations)})
    return {
        "feature_index": int(feat.index),
        "neg_str": [t for t, _ in feat.bottom_logits], "neg_values": _r(v for _, v in feat.bottom_logits),
        "pos_str": [t for t, _ in feat.top_logits], "pos_values": _r(v for _, v in feat.top_logits),
        "frac_nonzero": float(feat.density),
        "freq_hist_data_bar_values": _r(centres[nz]),
        "freq_hist_data_bar_heights": [int(c) for c in counts[nz]],
        "logits_hist_data_bar_heights": [], "logits_hist_data_bar_values": [],
        "n_prompts_total": int(n_prompts), "n_tokens_in_prompt": int(ctx), "dataset": dataset,
        "activations": acts,
        "neuron_alignment_indices": [], "neuron_alignment_values": [], "neuron_alignment_l1": [],
        "correlated_neurons_indices": [], "correlated_neurons_l1": [],
        "correlated_neurons_pearson": [], "correlated_features_indices": [],
        "correlated_features_l1": [], "correlated_features_pearson": [],
        "decoder_weights_dist": [],
    }


def export_neuronpedia(store, out: str | os.PathLike, *, sae: str | None = None,
                       batch_size: int = 128, include_dead: bool = False,
                       progress: bool = True) -> list[Path]:
    """Write the store's features as SAEDashboard batch files for a Neuronpedia upload.

    Args:
        store: an open store.
        out: output folder; one subfolder per SAE (`<model_id>_<layer>-<sae_set>`), holding
            `batch-0.json`, `batch-1.json`, ... of `batch_size` features each.
        sae: export this SAE only (default: all of them).
        batch_size: features per batch file.
        include_dead: also export features that never fired (Neuronpedia skips them too).
        progress: show a progress bar.

    Returns:
        The batch files written.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    manifest = store.manifest
    ctx = int(manifest.get("ctx") or 0)
    n_prompts = int(manifest.get("tokens") or 0) // max(1, ctx)
    corpus = manifest.get("corpus")
    dataset = str(corpus.get("source") or corpus.get("name") or "") if isinstance(
        corpus, dict) else str(corpus or "")
    written = []
    for name in [sae] if sae else store.sae_names:
        info = store.sae_info(name)
        model_id, layer, sae_set = _layer_and_set(info, name)
        folder = out / re.sub(r"[^A-Za-z0-9._-]+", "_", f"{model_id}_{layer}-{sae_set}")
        counts = np.asarray(store.firing_counts(name))
        todo = np.arange(len(counts)) if include_dead else np.flatnonzero(counts > 0)
        bar = tqdm(total=len(todo), desc=f"export {name}", unit="feature", disable=not progress)
        for b, start in enumerate(range(0, len(todo), batch_size)):
            feats = [feature_dict(store.feature(name, int(i)), n_prompts, ctx, dataset)
                     for i in todo[start:start + batch_size]]
            path = folder / f"batch-{b}.json"
            atomic_write_text(path, json.dumps({"model_id": model_id, "layer": layer,
                                                "sae_set": sae_set, "features": feats}))
            written.append(path)
            bar.update(len(feats))
        bar.close()
    return written


def read_export(folder: str | os.PathLike) -> dict[int, dict]:
    """Features of an exported SAE folder, by index (reads every `batch-*.json`)."""
    out = {}
    for path in sorted(Path(folder).glob(BATCH_GLOB)):
        for f in json.loads(path.read_text(encoding="utf-8"))["features"]:
            out[int(f["feature_index"])] = f
    return out
