"""Prompt inspector: run text through the live model and SAE; per token, its top features.

Choosing a feature shows its activation over the whole prompt and offers its feature page.
Without a loadable model the page says why and stops.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from scope.dashboard import data, render
from scope.store.labels import DENSE, RARE

path = st.session_state["store_path"]
sae = st.session_state["sae"]

st.subheader("Prompt inspector")
text = st.text_area(
    "Prompt", "The quick brown fox jumps over the lazy dog.", key="inspect_text", height=90
)
c = st.columns([2, 2, 2, 2], vertical_alignment="bottom")
k = c[0].slider("Features per token", 1, 10, 5, key="inspect_k")
relative = c[1].toggle(
    "Rank by share of max", value=True, key="inspect_relative",
    help="an activation as a fraction of the largest the feature reached in the store, so a "
    "feature that is strong for itself ranks above one that is merely large everywhere; off: "
    "raw activation",
)
hide_dense = c[2].toggle(
    f"Hide dense features (> {DENSE:.0%})", value=True, key="inspect_hide_dense",
    help="features that fire on most tokens would top every token's list",
)
hide_rare = c[3].toggle(
    f"Hide rare features (< {RARE:d} firings)", value=True, key="inspect_hide_rare",
    help="a feature seen a handful of times sits at its own max whenever it fires",
)
if not text.strip():
    st.info("Type a prompt to see which features fire on each token.")
    st.stop()

run = data.prompt_run(path, sae, text)
if run.error:
    st.warning("The prompt inspector needs the model and SAE, which are unavailable: "
               f"{render.md_text(run.error)}")
    st.stop()

acts = run.acts
# BOS carries huge, meaningless activations (SAEs were never trained on it): rank without it
skip = 1 if run.bos and len(run.tokens) > 1 else 0
store_max = data.max_activations(path, sae)
hide = np.zeros(len(store_max), dtype=bool)
if hide_dense:
    hide |= data.densities(path, sae) > DENSE
if hide_rare:
    hide |= data.firing_counts(path, sae) < RARE
names = data.labels(path, sae)
per_token = render.inspector_rank(acts, store_max, relative=relative, hide=hide, k=k)
body = acts[skip:].copy()
body[:, hide] = 0.0
ranked = render.prompt_features(body, k=50)

left, right = st.columns([3, 2])
with left:
    st.markdown("**Top features per token**")
    st.html(render.inspector_html(sae, run.tokens, per_token, names, skip))
with right:
    if not ranked:
        st.info("No feature fires on this prompt.")
        st.stop()
    labels = {f: f"#{f}  (max {render.format_value(v)})  {names[f][:50]}" for f, v in ranked}
    feature = st.selectbox(
        "Feature (ranked by its peak on this prompt)", list(labels), format_func=labels.get,
        key="inspect_feature",
    )
    column = acts[:, feature].copy()
    column[:skip] = 0.0
    st.markdown(f"**Feature {feature:d} over the prompt** · {render.md_text(names[feature])}")
    line = render.tokens_html(run.tokens, column.tolist(), float(column.max()))
    st.html(render.with_css(line))

    def _open() -> None:
        st.session_state["feature"] = int(st.session_state["inspect_feature"])

    if st.button(f"Open feature {feature:d}'s page", key="inspect_open", on_click=_open):
        st.switch_page("views/feature.py")
