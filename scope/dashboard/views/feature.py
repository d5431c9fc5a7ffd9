"""Feature page: one feature's statistics, histogram, logit effects and shaded contexts.

Navigation (index box, previous/next, random live feature, token search) writes
`st.session_state["feature"]` in callbacks, so the page renders once per interaction.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from scope.dashboard import data, render

path = st.session_state["store_path"]
sae = st.session_state["sae"]
store = data.get_store(path)
n = store.n_features(sae)
requested = int(st.session_state.get("feature", 0))
st.session_state["feature"] = int(min(max(0, requested), n - 1))
if requested != st.session_state["feature"]:
    st.warning(f"Feature {requested:,} does not exist: SAE {render.md_text(sae)} has {n:,} "
               f"features (0–{n - 1:,}). Showing feature {st.session_state['feature']:,}.")


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
    "Features specific to a token", key="search_token", placeholder="e.g. ' the' or 'def'",
    help="ranked by the share of the feature's firings on the token times the share of the "
    "token's occurrences it fires on",
)
if token:
    hits = data.search_token(path, sae, token, 20)
    if hits:
        names = data.labels(path, sae)
        labels = {h.index: f"#{h.index}  ({h.share_of_feature:.0%} of its firings, "
                  f"{h.share_of_token:.0%} of the token's)  {names[h.index][:60]}" for h in hits}
        c1, c2 = st.columns([4, 1], vertical_alignment="bottom")
        c1.selectbox(
            f"{len(hits)} features, most specific first", list(labels),
            format_func=labels.get, key="search_pick",
        )
        c2.button("Open", key="search_open", on_click=_from_search, width="stretch")
    else:
        st.info("No feature's top contexts peak on that token in this store.")

index = st.session_state["feature"]
view = data.feature_view(path, sae, index, data.labels_mtime(path))
st.query_params.update({"sae": sae, "feature": str(index)})

st.subheader(f"Feature {index:d}")
st.markdown(f"**{render.md_text(view.label)}**")
st.caption(f"{render.explanation_caption(view.explanation)} · SAE {render.md_text(sae)}")
if view.labels_problem:
    st.warning(render.md_text(view.labels_problem))
m = st.columns(5)
m[0].metric("Density", render.format_density(view.density))
m[1].metric("Max activation", render.format_value(view.max_activation))
m[2].metric("Mean activation", render.format_value(view.mean_activation))
m[3].metric("Firing count", render.format_count(view.firing_count))
if view.neuronpedia_url:
    m[4].link_button("Open on Neuronpedia ↗", view.neuronpedia_url)
if data.histograms_may_be_clipped(path):
    st.caption("⚠ This store was written in format 1: its histogram bins end at a fixed "
               "activation, so values above it are counted in the last bin (clipped). Extract "
               "again to get bins that fit the SAE's scale.")

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
        '<div style="display:flex;flex-wrap:wrap;gap:8px 16px">'  # side by side, or stacked
        '<div style="flex:1 1 11em;min-width:0">'
        f'{render.logit_table_html(view.top_logits, "Promoted tokens", True)}</div>'
        '<div style="flex:1 1 11em;min-width:0">'
        f'{render.logit_table_html(view.bottom_logits, "Suppressed tokens", False)}</div>'
        "</div>"
    )
    names = data.labels(path, sae)
    st.html(render.neighbours_html(sae, [(i, c, names[i]) for i, c in view.neighbours[:10]
                                         if 0 <= i < n]))
    if store.sae_info(sae).get("neighbours") == "approximate":
        st.caption("Approximate neighbours (too wide for an exact pass on a CPU): a true "
                   "neighbour can be missing; docs/store.md gives the recall measured.")

full = st.toggle("Show whole contexts", key="full_contexts")
# one HTML block for every context (a single element renders much faster than several)
st.html(render.contexts_html(view.top_examples, view.band_examples, view.max_activation,
                             full=full))
