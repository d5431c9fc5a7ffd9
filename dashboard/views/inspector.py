"""Prompt inspector: run text through the live model and SAE; per token, its top features.

Choosing a feature shows its activation over the whole prompt and offers its feature page.
Without a loadable model the page says why and stops.
"""

from __future__ import annotations

import streamlit as st

from dashboard import data, render

path = st.session_state["store_path"]
sae = st.session_state["sae"]

st.subheader("Prompt inspector")
text = st.text_area(
    "Prompt", "The quick brown fox jumps over the lazy dog.", key="inspect_text", height=90
)
k = st.slider("Features per token", 1, 10, 5, key="inspect_k")
if not text.strip():
    st.info("Type a prompt to see which features fire on each token.")
    st.stop()

run = data.prompt_run(path, sae, text)
if run.error:
    st.warning(f"The prompt inspector needs the model and SAE, which are unavailable: {run.error}")
    st.stop()

acts = run.acts
# BOS carries huge, meaningless activations (SAEs were never trained on it): rank without it
skip = 1 if run.bos and len(run.tokens) > 1 else 0
per_token = render.top_features_per_token(acts, run.tokens, k)
ranked = render.prompt_features(acts[skip:], k=50)

left, right = st.columns([3, 2])
with left:
    st.markdown("**Top features per token**")
    rows = [
        {
            "pos": p,
            "token": render.display_token(tok),
            "features": "(BOS: not read by SAEs)" if p < skip else
            "  ".join(f"#{f} ({render.format_value(v)})" for f, v in feats) or "—",
        }
        for p, (tok, feats) in enumerate(zip(run.tokens, per_token, strict=True))
    ]
    st.dataframe(rows, hide_index=True, height=min(38 * (len(rows) + 1), 500))
with right:
    if not ranked:
        st.info("No feature fires on this prompt.")
        st.stop()
    labels = {f: f"#{f}  (max {render.format_value(v)})" for f, v in ranked}
    feature = st.selectbox(
        "Feature (ranked by its peak on this prompt)", list(labels), format_func=labels.get,
        key="inspect_feature",
    )
    column = acts[:, feature].copy()
    column[:skip] = 0.0
    st.markdown(f"**Feature {feature} over the prompt**")
    line = render.tokens_html(run.tokens, column.tolist(), float(column.max()))
    st.html(render.with_css(line))

    def _open() -> None:
        st.session_state["feature"] = int(st.session_state["inspect_feature"])

    if st.button(f"Open feature {feature}'s page", key="inspect_open", on_click=_open):
        st.switch_page("views/feature.py")
