"""The dashboard's one data module: cached access to the store, the model and the SAEs.

`st.cache_resource` holds the handles that must exist once per server (the store, the model, each
SAE); `st.cache_data` holds the small plain-Python slices pages render (one feature, the density
vector, a token search). Pages never open files or load models themselves. The live model is
optional: when the store's manifest names no loadable model, `live_model` returns the reason and
the live pages show it instead of failing.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from scope.store.feature import Band, Example

log = logging.getLogger("scope.dashboard")

STORE_ENV = "SCOPE_DASHBOARD_STORE"


def store_path() -> str | None:
    """The store this server shows: `streamlit run app.py -- STORE`, else $SCOPE_DASHBOARD_STORE."""
    argv = sys.argv
    if len(argv) > 1 and Path(argv[0]).name == "app.py":
        return argv[1]
    return os.environ.get(STORE_ENV)


# ---------------------------------------------------------------------------------------------
# store (read only)
# ---------------------------------------------------------------------------------------------


@st.cache_resource(show_spinner=False)
def get_store(path: str):
    """The store handle, opened once per server (cheap: reads the manifest)."""
    from scope.store import open_store

    return open_store(path)


@dataclass
class FeatureView:
    """Everything the feature page shows about one feature, as plain Python (cacheable)."""

    sae: str
    index: int
    density: float
    firing_count: int
    max_activation: float
    mean_activation: float
    hist_counts: list[float]
    hist_edges: list[float]
    top_examples: list[Example]  # the store's own (frozen, plain lists): cached as they are
    band_examples: list[Band]
    top_logits: list[tuple[str, float]]
    bottom_logits: list[tuple[str, float]]
    neuronpedia_url: str | None = None
    label: str = ""
    explanation: tuple[str, float | None, str] | None = None  # (text, score, explainer)
    labels_problem: str | None = None  # labels.json is damaged (the store's data is intact)
    neighbours: list[tuple[int, float]] = field(default_factory=list)  # (index, cosine)
    fires_on: list[tuple[str, float]] = field(default_factory=list)  # (token, share)
    extra: dict[str, Any] = field(default_factory=dict)


def to_view(feat, sae: str) -> FeatureView:
    """Convert a store `Feature` (which may hold memory maps) to a plain `FeatureView`."""
    counts, edges = feat.histogram
    exp, problem = _explanation(feat)
    return FeatureView(
        sae=sae,
        index=int(feat.index),
        density=float(feat.density),
        firing_count=int(feat.firing_count),
        max_activation=float(feat.max_activation),
        mean_activation=float(feat.mean_activation),
        hist_counts=np.asarray(counts, dtype=float).tolist(),
        hist_edges=np.asarray(edges, dtype=float).tolist(),
        top_examples=list(feat.top_examples),
        band_examples=list(feat.band_examples),
        top_logits=[(str(t), float(v)) for t, v in feat.top_logits],
        bottom_logits=[(str(t), float(v)) for t, v in feat.bottom_logits],
        neuronpedia_url=feat.neuronpedia_url,
        label=str(feat.label or ""),
        explanation=None if exp is None else (str(exp.text), exp.score, str(exp.explainer)),
        labels_problem=problem,
        neighbours=[(int(i), float(c)) for i, c in feat.neighbours],
        fires_on=[(str(t), float(v)) for t, v in feat.fires_on],
    )


def _explanation(feat) -> tuple[Any, str | None]:
    """The feature's stored explanation, or (None, why) when only labels.json is damaged: a
    page must not call the whole store broken (and advise re-extracting it) for that."""
    from scope.errors import StoreChangedError, StoreCorruptError, StoreError, StoreOutsideError

    try:
        return feat.explanation, None
    except (StoreCorruptError, StoreOutsideError, StoreChangedError):
        raise  # the store's data itself
    except StoreError as exc:
        log.warning("dashboard: %s", exc)
        return None, ("labels.json cannot be read, so explanations are not shown; the store's "
                      "data is intact (re-import or re-run `scope explain` to rewrite it)")


@st.cache_data(show_spinner=False, max_entries=512)
def feature_view(path: str, sae: str, index: int, labels_mtime: int = 0) -> FeatureView:
    """One feature's slices, read once and kept (a few KB each); `labels_mtime` renews the
    cached label after an import or `scope explain`."""
    return to_view(get_store(path).feature(sae, int(index)), sae)


@st.cache_data(show_spinner=False)
def firing_counts(path: str, sae: str) -> np.ndarray:
    """Number of tokens each feature fired on, [d_sae]."""
    return np.asarray(get_store(path).firing_counts(sae), dtype=np.int64)


def store_changed(exc: BaseException) -> bool:
    """True for the error a reader raises when a run rewrote the store while it was open."""
    from scope.errors import StoreChangedError

    return isinstance(exc, StoreChangedError)


def forget_store() -> None:
    """Drop the cached store handle and slices so the next run reopens the new generation
    (the live model stays cached)."""
    get_store.clear()
    st.cache_data.clear()


def histograms_may_be_clipped(path: str) -> bool:
    """True for a store whose histograms may clip large activations into the last bin."""
    return bool(get_store(path).histograms_may_be_clipped)


@st.cache_data(show_spinner=False)
def densities(path: str, sae: str) -> np.ndarray:
    """Firing fraction of every feature of one SAE, [d_sae]."""
    return np.asarray(get_store(path).densities(sae), dtype=np.float64)


@st.cache_data(show_spinner=False)
def max_activations(path: str, sae: str) -> np.ndarray:
    """Largest activation of every feature of one SAE, [d_sae]."""
    return np.asarray(get_store(path).max_activations(sae), dtype=np.float64)


@st.cache_resource(show_spinner="Indexing the features of this SAE (once per server)…")
def feature_table(path: str, sae: str, labels_mtime: int):
    """Every feature's columns and label, with a text index (scope.explore.feature_list.FeatureTable).

    `labels_mtime` (labels.json's mtime) makes an import or `scope explain` show up without a
    restart."""
    from scope.explore.feature_list import FeatureTable

    return FeatureTable.build(get_store(path), sae)


def labels_mtime(path: str) -> int:
    from scope.store.labels import LABELS_FILE

    try:
        return (Path(path) / LABELS_FILE).stat().st_mtime_ns
    except OSError:
        return -1


def table(path: str, sae: str):
    """The current `FeatureTable` of one SAE."""
    return feature_table(path, sae, labels_mtime(path))


def labels(path: str, sae: str) -> list[str]:
    """Every feature's label (explanation, else the automatic label), by index."""
    return table(path, sae).labels


@st.cache_data(show_spinner=False)
def live_features(path: str, sae: str) -> np.ndarray:
    """Indices of features that fired at least once."""
    return np.flatnonzero(densities(path, sae) > 0)


@st.cache_data(show_spinner=False, max_entries=256)
def search_token(path: str, sae: str, token: str, k: int = 20) -> list:
    """Features most specific to a token string, best first (`feature_list.TokenHit`s)."""
    from scope.explore.feature_list import token_search

    return token_search(get_store(path), sae, token, k=k)


def home_feature(path: str, sae: str) -> int:
    """The feature the dashboard opens on: the most specific live one (not feature 0)."""
    return table(path, sae).most_specific()


@st.cache_data(show_spinner=False)
def sae_info(path: str, sae: str) -> dict:
    return dict(get_store(path).sae_info(sae))


# ---------------------------------------------------------------------------------------------
# live model and SAEs (optional)
# ---------------------------------------------------------------------------------------------


@dataclass
class Live:
    """The loaded model, or why there is none (`error`)."""

    model: Any = None
    error: str | None = None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


@st.cache_resource(show_spinner="Loading the model (once per server)…")
def live_model(path: str) -> Live:
    """Load the model named in the store's manifest, once; a failure is kept as a reason."""
    spec = (get_store(path).manifest.get("model") or {}).get("spec")
    if not spec:
        return Live(error="the store's manifest names no loadable model (manifest.model.spec)")
    try:
        from scope.model.load import load_model

        return Live(model=load_model(spec))
    except Exception as exc:  # any failure becomes a message on the live pages
        log.warning("dashboard: cannot load model %r: %s", spec, exc)
        return Live(error=f"cannot load model {spec!r}: {_describe(exc)}")


@st.cache_resource(show_spinner="Loading the SAE…")
def live_sae(path: str, sae: str):
    """Load one SAE of the store by its manifest spec (checked against the live model)."""
    from scope.saes.loading import load_sae

    info = sae_info(path, sae)
    spec = info.get("spec")
    if not spec:
        raise ValueError(f"the store's manifest has no loadable spec for SAE {sae!r}")
    live = live_model(path)
    return load_sae(spec, model=live.model) if live.model is not None else load_sae(spec)


@st.cache_resource(show_spinner=False)
def model_lock(path: str) -> threading.Lock:
    """One lock per shared model: steering hooks must not leak into another session's run."""
    return threading.Lock()


def require_live_pair(path: str, sae: str, page: str) -> tuple[Any, Any]:
    """The live model and SAE for a page that cannot work without them; otherwise the page
    says why (escaped) and stops."""
    from scope.dashboard import render

    model, sae_obj, unavailable = live_pair(path, sae)
    if unavailable:
        st.warning(f"{render.md_text(page)} needs the model and SAE, which are unavailable: "
                   f"{render.md_text(unavailable)}")
        st.stop()
    return model, sae_obj


def live_pair(path: str, sae: str) -> tuple[Any, Any, str | None]:
    """(model, sae, None) ready for live use, or (None, None, reason)."""
    live = live_model(path)
    if live.model is None:
        return None, None, live.error
    try:
        return live.model, live_sae(path, sae), None
    except Exception as exc:  # shown to the user; cache_resource retries next run
        log.warning("dashboard: cannot load SAE %r: %s", sae, exc)
        return None, None, f"cannot load SAE {sae!r}: {_describe(exc)}"


def encode_prompt(model, sae, text: str) -> tuple[list[str], np.ndarray, bool]:
    """Run text through the model to the SAE's site and encode it.

    Returns:
        (token strings, feature activations [pos, d_sae], whether position 0 is BOS).
    """
    import torch

    from scope.model.activations import capture

    tokens = model.to_tokens(text)  # [1, pos], BOS prepended
    with torch.no_grad():
        acts = capture(model, tokens, [sae.cfg.hook_name])[sae.cfg.hook_name]
        feats = sae.encode(acts.to(next(sae.parameters()).dtype))
    strs = [str(s) for s in model.to_str_tokens(tokens[0])]
    bos_id = getattr(model.tokenizer, "bos_token_id", None)
    return strs, feats[0].float().cpu().numpy(), bos_id is not None and int(tokens[0, 0]) == bos_id


@st.cache_data(show_spinner=False, max_entries=64)
def drift(path: str, prompt: str, texts: tuple[str, ...]) -> list[float]:
    """Losses of continuations under the store's unsteered model (cached per text)."""
    from scope.steer.drift import continuation_losses

    model = live_model(path).model
    with model_lock(path):
        return continuation_losses(model, prompt, list(texts))


@st.cache_data(show_spinner=False, max_entries=64)
def default_continuation(path: str, prompt: str, max_new_tokens: int, temperature: float,
                         seed: int) -> str:
    """The unsteered continuation, cached: steering again with other features or strengths
    reuses it (only the steered text is generated)."""
    from scope.steer.intervene import generate

    model = live_model(path).model
    with model_lock(path):
        return generate(model, prompt, max_new_tokens=int(max_new_tokens),
                        temperature=float(temperature), seed=int(seed))


def steered_continuation(path: str, model, sae, spec: dict[int, float], mode: str, prompt: str,
                         *, max_new_tokens: int, temperature: float, seed: int) -> str:
    """A steered continuation (the steering hooks are attached for this generation only)."""
    from scope.steer.intervene import generate, steering

    with model_lock(path), steering(model, sae, spec, mode=mode):
        return generate(model, prompt, max_new_tokens=int(max_new_tokens),
                        temperature=float(temperature), seed=int(seed))


@dataclass
class PromptRun:
    """A prompt encoded by the live model and SAE, or why it could not be (`error`)."""

    tokens: list[str] = field(default_factory=list)
    acts: np.ndarray | None = None  # [pos, d_sae]
    bos: bool = False  # position 0 is BOS (SAEs never saw it: left out of rankings)
    error: str | None = None


@st.cache_data(show_spinner="Running the prompt…", max_entries=64)
def prompt_run(path: str, sae: str, text: str) -> PromptRun:
    """Tokens and SAE activations of a prompt (cached per store, SAE and text)."""
    model, sae_obj, error = live_pair(path, sae)
    if error:
        return PromptRun(error=error)
    with model_lock(path):
        tokens, acts, bos = encode_prompt(model, sae_obj, text)
    return PromptRun(tokens=tokens, acts=acts, bos=bos)
