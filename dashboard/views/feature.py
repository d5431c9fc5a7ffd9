"""Feature page: one feature's statistics, histogram, logit effects and shaded contexts.

Navigation (index box, previous/next, random live feature, token search) writes
`st.session_state["feature"]` in callbacks, so the page renders once per interaction.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from dashboard import data, render

path = st.session_state["store_path"]
sae = st.session_state["sae"]
store = data.get_store(path)
n = store.n_features(sae)
st.session_state["feature"] = int(min(max(0, st.session_state.get("feature", 0)), n - 1))


def _go(index: int) -> None:
    st.session_state["feature"] = int(min(max(0, index), n - 1))


def _from_box() -> None:
    _go(st.session_state["feature_box"])


def _step(delta: int) -> None:
    _go(st.session_state["feature"] + delta)


def _random() -> None:
    live = data.live_features(path, sae)
    if len(live):
        rng = np.random.default_rng()
        _go(int(rng.choice(live)))


def _from_search() -> None:
    choice = st.session_state.get("search_pick")
    if choice is not None:
        _go(int(choice))


# keep the box in step with the current feature (allowed: set before the widget is created)
st.session_state["feature_box"] = st.session_state["feature"]

nav = st.columns([2, 1, 1, 1.4, 4], vertical_alignment="bottom")
nav[0].number_input("Feature", 0, n - 1, step=1, key="feature_box", on_change=_from_box)
nav[1].button("◀ Prev", key="prev", on_click=_step, args=(-1,), width="stretch")
nav[2].button("Next ▶", key="next", on_click=_step, args=(1,), width="stretch")
nav[3].button("Random live", key="random", on_click=_random, width="stretch")
token = nav[4].text_input(
    "Features that fire most on token", key="search_token", placeholder="e.g. ' the' or 'def'"
)
if token:
    hits = data.search_token(path, sae, token, 20)
    if hits:
        labels = {f: f"#{f}  (max {render.format_value(v)})" for f, v in hits}
        c1, c2 = st.columns([4, 1], vertical_alignment="bottom")
        c1.selectbox(
            f"{len(hits)} features fire most on this token", list(labels),
            format_func=labels.get, key="search_pick",
        )
        c2.button("Open", key="search_open", on_click=_from_search, width="stretch")
    else:
        st.info("No feature's top contexts peak on that token in this store.")

index = st.session_state["feature"]
view = data.feature_view(path, sae, index)
st.query_params.update({"sae": sae, "feature": str(index)})

st.subheader(f"Feature {index}")
st.caption(f"SAE {render.md_escape(sae)}")
m = st.columns(5)
m[0].metric("Density", render.format_density(view.density))
m[1].metric("Max activation", render.format_value(view.max_activation))
m[2].metric("Mean activation", render.format_value(view.mean_activation))
m[3].metric("Firing count", f"{view.firing_count:,}")
url = view.neuronpedia_url or render.neuronpedia_url(
    data.sae_info(path, sae).get("neuronpedia_id"), index
)
if url:
    m[4].link_button("Open on Neuronpedia ↗", url)

left, right = st.columns([3, 2])
with left:
    if sum(view.hist_counts) > 0:
        st.plotly_chart(
            render.histogram_figure(view.hist_counts, view.hist_edges),
            config={"displayModeBar": False}, key="histogram", theme=None,
        )
    else:
        st.info("This feature never fired on the corpus (dead feature): no histogram.")
with right:
    st.html(
        '<div style="display:flex;gap:16px">'
        f'<div style="flex:1">{render.logit_table_html(view.top_logits, "Promoted tokens", True)}</div>'
        f'<div style="flex:1">{render.logit_table_html(view.bottom_logits, "Suppressed tokens", False)}</div>'
        "</div>"
    )

full = st.toggle("Show whole contexts", key="full_contexts")
# one HTML block for every context (a single element renders much faster than several)
st.html(render.contexts_html(view.top_examples, view.band_examples, view.max_activation,
                             full=full))
