"""SAEDashboard 0.8.0's Neuronpedia batch format, spelled once, computed from a store's feature.

SAEDashboard's `NeuronpediaRunner` writes per SAE a folder `<model>_<set>_<hook>_<d_sae>` with
`batch-N.json` (128 features each: `model_id`, `layer`, `sae_set`, `sae_id_suffix`,
`features`), `skipped_indexes.json` and `run_settings.json`. Per feature it writes the fields of
`NeuronpediaDashboardFeature.to_dict`; its activation groups are the top 20 contexts (`bin_min`
-1, `bin_max` the max, `bin_contains` -1) then 5 equal-width intervals of [0, max], highest
first, 5 contexts each, whose `bin_contains` is the share of *all* tokens in the interval (the
lowest interval includes the tokens where the feature is 0); each context is its window without
position 0, with `qualifying_token_index` the position of the token that put it in its group.
The activation histogram is 50 equal-width bins between the smallest and largest non-zero
activation; the logit histogram 50 equal-width bins over the decoder direction's effect on every
vocabulary logit.

What a store keeps and so what is approximated here (docs/explore.md says the same): activation
histograms are kept as counts in fixed log-spaced bins, not the activations themselves, so the 50
bins are rebinned from them (mass spread uniformly within each log bin; the minimum non-zero
activation is taken as the lower edge of the first non-empty log bin) and the interval shares
are computed the same way; interval contexts are chosen among the contexts the store kept (top
and band samples), not sampled uniformly from every token in the interval.
"""

from __future__ import annotations

import math
import re

import numpy as np

from scope.errors import ExportError

N_FEATURES_PER_BATCH = 128
N_QUANTILES = 5
QUANTILE_GROUP_SIZE = 5
TOP_GROUP_SIZE = 20
HIST_BINS = 50
#: SAEDashboard's NeuronpediaRunner: `FeatureTablesConfig(n_rows=3)`
NEURON_ROWS = 3
#: SAEDashboard's default `sparsity_threshold` (written to skipped_indexes.json)
SPARSITY_THRESHOLD = -6
BATCH_NAME = "batch-{}.json"
SKIPPED_FILE = "skipped_indexes.json"
RUN_SETTINGS_FILE = "run_settings.json"
#: key of run_settings.json that marks a folder scope wrote (so a re-export may replace it)
MARKER = "scope_export"


def neuronpedia_model_id(name: str) -> str:
    """Neuronpedia's model id of a model name: `google/gemma-3-4b-pt` -> `gemma-3-4b`."""
    base = str(name or "model").rstrip("/").split("/")[-1].lower()
    return re.sub(r"-pt$", "", base) or "model"


def source_parts(info: dict, sae_name: str) -> tuple[str, int, str, str | None]:
    """(model_id, layer, sae_set, sae_id_suffix) of an SAE: from its Neuronpedia id
    (`gemma-2-2b/20-gemmascope-res-16k[__suffix]`) when it has one, else from the model name,
    the hook's layer and the SAE's name."""
    npid = str(info.get("neuronpedia_id") or "").strip("/")
    m = re.fullmatch(r"([^/]+)/(\d+)-([^/]+?)(?:__([^/]+))?", npid)
    if m:
        return m.group(1), int(m.group(2)), m.group(3), m.group(4)
    layer = re.search(r"blocks\.(\d+)\.", str(info.get("hook_name", "")))
    slug = re.sub(r"[^a-z0-9]+", "-", sae_name.lower()).strip("-") or "sae"
    return (neuronpedia_model_id(info.get("model_name") or "model"),
            int(layer.group(1)) if layer else 0, f"scope-{slug}", None)


def folder_name(model_id: str, sae_set: str, hook: str, d_sae: int, suffix: str | None) -> str:
    """SAEDashboard's output subfolder `<model>_<set>_<hook>_<d_sae>[_<suffix>]`, made safe."""
    name = f"{model_id}_{sae_set}_{hook}_{d_sae}" + (f"_{suffix}" if suffix else "")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def r3(values) -> list[float]:
    """SAEDashboard's `round_list`: `np.round(values, 3)`."""
    return np.round(np.asarray(list(values) if not isinstance(values, (list, np.ndarray))
                               else values, dtype=np.float64), 3).tolist()


def pct(share: float) -> float:
    """A share as SAEDashboard's converter reads it back from a `{x:.3%}` title."""
    return float(f"{share:.3%}".rstrip("%")) / 100


def _cdf(counts: np.ndarray, edges: np.ndarray, x) -> np.ndarray:
    """Firings at or below each `x` from a binned histogram, mass uniform within each bin."""
    x = np.atleast_1d(np.asarray(x, dtype=np.float64))
    width = np.where(edges[1:] > edges[:-1], edges[1:] - edges[:-1], 1.0)
    frac = np.clip((x[:, None] - edges[None, :-1]) / width[None, :], 0.0, 1.0)
    return frac @ counts


def _mass(counts: np.ndarray, edges: np.ndarray, lo: float, hi: float) -> float:
    """Firings in [lo, hi] from a binned histogram, mass uniform within each bin."""
    a, b = _cdf(counts, edges, [lo, hi])
    return float(max(0.0, b - a))


def rebin(counts, edges, top: float, n_bins: int = HIST_BINS) -> tuple[list[float], list[int]]:
    """`(bar_values, bar_heights)`: `n_bins` equal-width bins between the smallest and the
    largest non-zero activation, from the store's log-binned counts (integer heights whose sum
    is the histogram's total, by largest remainder)."""
    counts, edges = np.asarray(counts, dtype=np.float64), np.asarray(edges, dtype=np.float64)
    nz = np.flatnonzero(counts > 0)
    if nz.size == 0 or not top > 0:
        return [], []
    lo = float(min(edges[nz[0]], top))
    grid = np.linspace(lo, top, n_bins + 1)
    raw = np.clip(np.diff(_cdf(counts, edges, grid)), 0.0, None)
    if lo == top:
        raw[n_bins // 2] = counts.sum()
    # mass past the max (the last non-empty log bin reaches beyond it) belongs to the last bar
    raw[-1] += max(0.0, counts.sum() - raw.sum())
    total = int(round(counts.sum()))
    heights = np.floor(raw).astype(np.int64)
    short = total - int(heights.sum())
    if short > 0:
        order = np.argsort(-(raw - heights), kind="stable")[:short]
        heights[order] += 1
    step = (top - lo) / n_bins
    return r3(lo + step * (k + 0.5) for k in range(n_bins)), heights.tolist()


def hist_equal_width(values: np.ndarray, n_bins: int = HIST_BINS) -> tuple[list[float], list[int]]:
    """SAEDashboard's `HistogramData.from_data`: `n_bins` equal-width bins over [min, max]
    (`torch.histc` semantics: the max falls in the last bin), bar values at the bin centres."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return [], []
    lo, hi = float(v.min()), float(v.max())
    if hi == lo:
        heights = np.zeros(n_bins, dtype=np.int64)
        heights[n_bins // 2 if n_bins else 0] = v.size  # histc puts equal values mid-range
        return r3([lo] * n_bins), heights.tolist()
    idx = np.clip(((v - lo) / (hi - lo) * n_bins).astype(np.int64), 0, n_bins - 1)
    heights = np.bincount(idx, minlength=n_bins)
    step = (hi - lo) / n_bins
    return r3(lo + step * (k + 0.5) for k in range(n_bins)), heights.tolist()


def neuron_alignment(w_dec_row, n_rows: int = NEURON_ROWS) -> dict:
    """SAEDashboard's `add_neuron_alignment_data` for one feature: the `n_rows` largest (signed)
    entries of its decoder row, their values and each one's share of the row's L1 norm."""
    w = np.asarray(w_dec_row, dtype=np.float64)
    idx = np.argsort(-w, kind="stable")[:n_rows]
    l1 = float(np.abs(w).sum())
    return {"neuron_alignment_indices": [int(i) for i in idx],
            "neuron_alignment_values": r3(w[idx]),
            "neuron_alignment_l1": r3(np.abs(w[idx]) / l1 if l1 > 0 else np.zeros(len(idx)))}


def head_allocation(w_dec_row, n_heads: int) -> list[float]:
    """SAEDashboard's `get_decoder_weights_distribution` of an attn.hook_z feature: each head's
    share of the summed per-head norms of its decoder row (`decoder_weights_dist`)."""
    norms = np.linalg.norm(np.asarray(w_dec_row, dtype=np.float64).reshape(n_heads, -1), axis=1)
    total = float(norms.sum())
    return [float(x) for x in (norms / total if total > 0 else norms)]


def _activation(ex, bin_min: float, bin_max: float, bin_contains: float, q: int) -> dict:
    acts = np.asarray(ex.activations, dtype=np.float64)
    if not np.isfinite(acts).all():
        raise ExportError(f"window {ex.window}: a context holds NaN or inf activations; "
                          "re-extract the store")
    return {"bin_min": bin_min, "bin_max": bin_max, "bin_contains": bin_contains,
            "tokens": list(ex.tokens[1:]), "values": r3(acts[1:]),
            "qualifying_token_index": max(0, int(q) - 1)}


def activation_groups(feat, total_tokens: int, n_quantiles: int = N_QUANTILES,
                      group_size: int = QUANTILE_GROUP_SIZE) -> list[dict]:
    """The top group then the interval groups (highest first) of one feature."""
    top = list(feat.top_examples)
    mx = float(feat.max_activation)
    out = [_activation(e, -1, round(mx, 3), -1, e.max_position) for e in top[:TOP_GROUP_SIZE]]
    if not mx > 0 or n_quantiles <= 0:
        return out
    counts, edges = feat.histogram
    counts, edges = np.asarray(counts, dtype=np.float64), np.asarray(edges, dtype=np.float64)
    zeros = max(0, int(total_tokens) - int(feat.firing_count))
    pool = [e for b in reversed(feat.band_examples or []) for e in b.examples] + top[::-1]
    used: set[int] = set()
    q = np.linspace(0.0, mx, n_quantiles + 1)
    for i in range(n_quantiles - 1, -1, -1):
        lower, upper = float(q[i]), float(q[i + 1])
        inside = _mass(counts, edges, lower, upper) + (zeros if lower <= 0 else 0)
        share = pct(inside / max(1, int(total_tokens)))
        picked = []
        for peak_only in (True, False):
            for e in pool:
                if len(picked) >= group_size or e.window in used:
                    continue
                acts = np.asarray(e.activations, dtype=np.float64)
                ok = (acts >= lower) & (acts <= upper)
                ok[0] = False
                if peak_only and not lower <= e.max_activation <= upper:
                    continue
                if ok.any():
                    j = int(np.flatnonzero(ok)[np.argmax(acts[ok])])
                    picked.append((e, j))
                    used.add(e.window)
        out += [_activation(e, round(lower, 3), round(upper, 3), share, j) for e, j in picked]
    return out


def _finite_or_fail(value: float, what: str, where: str) -> float:
    if not math.isfinite(float(value)):
        raise ExportError(f"{where}: {what} is {value}; the store holds a non-finite value, "
                          "which Neuronpedia cannot show: re-extract the store")
    return float(value)


def feature_record(feat, *, n_prompts: int, ctx: int, dataset: str, total_tokens: int,
                   logit_hist: tuple[list, list] | None, weights: dict | None = None) -> dict:
    """One feature as SAEDashboard's `NeuronpediaDashboardFeature.to_dict` writes it; `weights`
    holds what comes from the SAE's weights (`neuron_alignment_*`, `decoder_weights_dist`)."""
    where = f"feature {feat.index} of {feat.sae_name}"
    dead = int(feat.firing_count) <= 0
    mx = 0.0 if dead else _finite_or_fail(feat.max_activation, "max activation", where)
    density = _finite_or_fail(feat.density, "density", where)
    counts, edges = feat.histogram
    values, heights = ([], []) if dead else rebin(counts, edges, mx)
    acts = [] if dead else activation_groups(feat, total_tokens)
    pos, neg = feat.top_logits, feat.bottom_logits
    for _, v in [*pos, *neg]:
        _finite_or_fail(v, "a logit effect", where)
    lh_values, lh_heights = logit_hist or ([], [])
    return {
        "feature_index": int(feat.index),
        "neuron_alignment_indices": [], "neuron_alignment_values": [], "neuron_alignment_l1": [],
        "correlated_neurons_indices": [], "correlated_neurons_l1": [],
        "correlated_neurons_pearson": [], "correlated_features_indices": [],
        "correlated_features_l1": [], "correlated_features_pearson": [],
        "neg_str": [t for t, _ in neg], "neg_values": r3(v for _, v in neg),
        "pos_str": [t for t, _ in pos], "pos_values": r3(v for _, v in pos),
        "frac_nonzero": pct(density),
        "freq_hist_data_bar_values": values, "freq_hist_data_bar_heights": heights,
        "logits_hist_data_bar_heights": lh_heights, "logits_hist_data_bar_values": lh_values,
        "n_prompts_total": int(n_prompts), "n_tokens_in_prompt": int(ctx), "dataset": dataset,
        "decoder_weights_dist": [], "activations": acts, "vector": [],
    } | (weights or {})


#: Neuronpedia's explanation batches: `explanations/batch-N.jsonl.gz`, 1,024 rows each
EXPLANATIONS_DIR = "explanations"
EXPLANATION_BATCH = "batch-{}.jsonl.gz"
N_EXPLANATIONS_PER_BATCH = 1024
#: the user Neuronpedia's seed creates (apps/webapp/lib/env.ts DEFAULT_CREATOR_USER_ID)
SEED_CREATOR_ID = "clkht01d40000jv08hvalcvly"


def source_id(layer: int, sae_set: str, suffix: str | None) -> str:
    """Neuronpedia's source id, as the converter builds it: `<layer>-<set>[__<suffix>]`."""
    return f"{layer}-{sae_set}" + (f"__{suffix}" if suffix else "")


def explanation_rows(explanations: dict, model_id: str, source: str, creator_id: str,
                     created_at: str) -> list[dict]:
    """Rows of Neuronpedia's `Explanation` table (its importer reads `explanations/*.jsonl.gz`
    of these): `index` a string, as Neuronpedia writes it. `typeName` and
    `explanationModelName` reference Neuronpedia's own tables, so they stay null and scope's
    explainer and scores go in `notes`."""
    rows = []
    for i in sorted(explanations):
        e = explanations[i]
        notes = [f"{e.source or 'scope'}", f"explainer {e.explainer}" if e.explainer else ""]
        if e.score is not None:
            notes.append(f"detection {e.score:.3f}")
        if e.fuzz_score is not None:
            notes.append(f"fuzzing {e.fuzz_score:.3f}")
        rows.append({"id": f"scope-{model_id}-{source}-{int(i)}", "modelId": model_id,
                     "layer": source, "index": str(int(i)), "description": e.text,
                     "authorId": creator_id, "embedding": None, "triggeredById": None,
                     "typeName": None, "explanationModelName": None,
                     "notes": "scope: " + ", ".join(n for n in notes if n),
                     "createdAt": created_at})
    return rows


def converter_hook_point(hook: str) -> str:
    """The converter's `--hook-point` choice of a TransformerLens hook name
    (`blocks.20.attn.hook_z` -> `hook_z`)."""
    return str(hook).rsplit(".", 1)[-1]


def converter_args(model_id: str, layer: int, sae_set: str, hook: str, dataset: str,
                   n_prompts: int, ctx: int) -> dict:
    """The options of Neuronpedia's `convert-saedashboard-to-neuronpedia-export.py` that this
    export fixes (the rest, such as the release and the creator, are the user's)."""
    return {"model-name": model_id, "neuronpedia-source-set-id": sae_set, "layer-num": layer,
            "hook-point": converter_hook_point(hook),
            "prompts-huggingface-dataset-path": dataset, "n-prompts-total": n_prompts,
            "n-tokens-in-prompt": ctx}
